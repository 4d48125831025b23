#!/usr/bin/env python
"""2D score distillation on the lab prior (janus_lab.sds2d): the baseline variant's guidance
optimises one image seen from the front, per prompt and setting; the judge says what it shows.

    python custom/janus_lab/scripts/lab_sds_2d.py --out outputs/lab-sds2d
    python custom/janus_lab/scripts/lab_sds_2d.py --out outputs/lab-sds2d --parameterisations pixels latents \
        --resolutions 32 16 --lrs 0.1 0.01 --steps 600

Writes sds2d.md (one row per setting: the judged view, kind and face of each prompt's image) and
sds2d.png (a row of images per setting). See README, "The 3D experiment".
"""

import argparse
import dataclasses
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout
import torch  # noqa: E402

from antijanus.core.guidance import ScoreDistillationGuidance  # noqa: E402
from antijanus.utils.errors import ConfigError  # noqa: E402
from antijanus.utils.imaging import to_pil  # noqa: E402
from janus_lab.cli_args import (count, existing_folder, integer_at_least, positive_number,  # noqa: E402
                                refuse_repeats, require_output_folder, seed)
from janus_lab.experiment3d import Experiment, FastSettings, LabModels, lab_prompts, worker_models  # noqa: E402
from janus_lab.sds2d import PARAMETERISATIONS, SDS2DSettings, optimise_image  # noqa: E402
from janus_lab.volume_orbits import kind_of  # noqa: E402
from janus_lab.world import ATTRIBUTES, KINDS, VIEWS  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/lab-sds2d")
    parser.add_argument("--prompts", nargs="+", default=[p for p in lab_prompts() if "smiling" not in p])
    parser.add_argument("--parameterisations", nargs="+", choices=PARAMETERISATIONS, default=["pixels", "latents"])
    parser.add_argument("--resolutions", nargs="+", type=integer_at_least(2), default=[32],
                        help="pixels per side (pixels only)")
    parser.add_argument("--lrs", nargs="+", type=positive_number, default=[0.1])
    parser.add_argument("--steps", type=count, default=600)
    parser.add_argument("--guidance-scale", type=positive_number, default=None,
                        help="default: the baseline config's (100)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--threads", type=count, default=1)
    parser.add_argument("--judge", type=existing_folder, default=None, help="the judge folder (default: the lab's)")
    return parser


def parse_args(argv=None):
    """The arguments, the baseline's experiment (its prompt outputs and guidance) and the settings
    tried, every one checked (one line and exit 2 otherwise) before any model is loaded."""
    parser = make_parser()
    args = parser.parse_args(argv)
    refuse_repeats(parser, args, ("--prompts", "--parameterisations", "--resolutions", "--lrs"))
    try:
        for prompt in args.prompts:
            kind_of(prompt)
        # the baseline variant's guidance config and prompt outputs, as the fast path builds them
        experiment = Experiment(
            os.path.join(args.out, "prompts"), variants=("baseline",), prompts=tuple(args.prompts),
            seeds=(args.seed,), settings=FastSettings(steps=args.steps, guidance_scale=args.guidance_scale),
            models=dataclasses.replace(LabModels.default(), **({"judge": args.judge} if args.judge else {})))
        settings = [SDS2DSettings(parameterisation, resolution, args.steps, lr)
                    for parameterisation, lr in itertools.product(args.parameterisations, args.lrs)
                    for resolution in (args.resolutions if parameterisation == "pixels" else [32])]
    except ConfigError as error:
        parser.error(str(error))
    require_output_folder(parser, "--out", args.out)
    return args, experiment, settings


def main(argv=None) -> int:
    args, experiment, settings = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    tasks = experiment.tasks(log=lambda m: None)
    backbone, judge = worker_models(experiment.models, args.threads)
    face = ATTRIBUTES.index("face")
    lines = ["| parameterisation | resolution | lr | " + " | ".join(args.prompts) + " |",
             "|" + " --- |" * (3 + len(args.prompts))]
    rows = []
    for s in settings:
        cells, images = [], []
        for task in tasks:
            guidance = ScoreDistillationGuidance(task.guidance, "cpu", backbone=backbone)
            guidance.info = guidance.warn = lambda message: None
            image = optimise_image(guidance, task.prompt_output, s, seed=args.seed)["image"]
            verdict = judge(image[None])
            cells.append(f"{VIEWS[int(verdict['view'])]}, {KINDS[int(verdict['kind'])]}, "
                         f"face {float(verdict['attribute_probs'][0, face]):.2f}")
            images.append(image)
        resolution = str(s.resolution) if s.parameterisation == "pixels" else "-"
        lines.append(f"| {s.parameterisation} | {resolution} | {s.lr:g} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
        rows.append(torch.cat(images, dim=2))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sds2d.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    grid = torch.cat(rows, dim=1)
    to_pil(grid).resize((grid.shape[2] * 4, grid.shape[1] * 4)).save(os.path.join(args.out, "sds2d.png"))
    print(f"{len(settings)} setting(s) x {len(tasks)} prompt(s), {args.steps} steps: {time.time() - start:.0f} s; "
          f"{os.path.join(args.out, 'sds2d.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
