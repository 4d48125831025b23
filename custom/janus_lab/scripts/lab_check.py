#!/usr/bin/env python3
"""Check the Janus lab prior: bias (front share without a view phrase vs front cameras),
steerability (requested view with and without its phrase) and kind accuracy, sampling with our
DDIM sampler and judging with the lab judge. Also prints the training data's statistics.

    python custom/janus_lab/scripts/lab_check.py                      # the committed models, 32 images per prompt
    python custom/janus_lab/scripts/lab_check.py --n 8 --steps 20     # a quick look
    python custom/janus_lab/scripts/lab_check.py --out outputs/lab-check   # + figures.json, a sample grid, and the
                                                          # samples (reused by a re-run with the
                                                          # same prior and settings)
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before transformers is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout
import torch  # noqa: E402

from antijanus.utils.imaging import image_grid  # noqa: E402
from janus_lab.cli_args import count, existing_folder, positive_number, require_output_folder, seed  # noqa: E402
from janus_lab.checks import CheckSettings, format_figures, run_checks  # noqa: E402
from janus_lab.data import WorldBias, format_statistics, make_samples, statistics  # noqa: E402
from janus_lab.model_files import model_path  # noqa: E402
from janus_lab.world import VIEWS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, every one checked (one line and exit 2 otherwise) before any sampling."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", type=existing_folder, default=None, help="prior folder (default: the committed one)")
    parser.add_argument("--judge", type=existing_folder, default=None, help="judge folder (default: the committed one)")
    parser.add_argument("--n", type=count, default=32, help="images per prompt")
    parser.add_argument("--steps", type=count, default=30, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=positive_number, default=7.5)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--threads", type=count, default=1)
    parser.add_argument("--out", default=None, help="folder for figures.json and samples.png")
    args = parser.parse_args(argv)
    if args.out is not None:
        require_output_folder(parser, "--out", args.out)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.prior = args.prior or model_path("prior")
    args.judge = args.judge or model_path("judge")

    torch.set_num_threads(args.threads)
    start = time.time()
    samples, _ = make_samples(WorldBias(), n=4000)
    print("training data (first 4000 of the default WorldBias):\n" + format_statistics(statistics(samples)))
    settings = CheckSettings(n_per_prompt=args.n, steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed)
    cache = os.path.join(args.out, "samples.pt") if args.out else None
    results, figures = run_checks(args.prior, args.judge, settings, cache=cache)
    print(format_figures(figures))
    print(f"({time.time() - start:.0f} s, {args.steps} DDIM steps, guidance {args.guidance_scale}, "
          f"{args.n} images per prompt)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "figures.json"), "w") as f:
            json.dump({"settings": vars(args), "figures": figures}, f, indent=2)
        cols = min(args.n, 8)
        images, labels = [], []
        for r in results:
            for i in range(cols):
                images.append(r["images"][i])
                labels.append(f"{r['prompt']} -> {VIEWS[int(r['judged_view'][i])]}" if i == 0 else VIEWS[int(r['judged_view'][i])])
        image_grid(images, labels, columns=cols, cell=96, label_height=30).save(os.path.join(args.out, "samples.png"))
        print(f"wrote {args.out}/figures.json and samples.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
