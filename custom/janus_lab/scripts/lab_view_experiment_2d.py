#!/usr/bin/env python
"""Perp-Neg's Table 1 on the Janus lab prior, judged by the lab judge (janus_lab.experiment2d).

    python custom/janus_lab/scripts/lab_view_experiment_2d.py --out outputs/lab-view2d

For each kind (bear, robot, frog) and requested view (front, side, back): vanilla CFG with the
view phrase ("a bear, back view"), composable negation (CEBM) and Perp-Neg with the paper's view
negatives (back -> side + front, side -> front, front -> side), 50 seeds (0..49) per cell, the
same for every method; DDIM 50 steps, guidance scale 7.5, negative weight 1.0 (the defaults of
scripts/view_experiment_2d.py, fixed before any result). The judge decides each image's view among
its four regions. Prints and saves the success-rate table per kind and pooled, with 95 % Wilson
intervals (success.md, success.json), every image's verdict (records.csv, samples.pt), image grids
per method and kind (first 10 seeds) and the Perp-Neg interpolation grid (interpolation.png).
Further negative weights (--negative-weights 1 2) are extra rows, reported separately.

Smoke run (seconds): --seeds 0 1 --steps 4 --interpolation-steps 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout
from janus_lab.classifier import JudgeViewClassifier  # noqa: E402
from janus_lab.cli_args import (count, existing_folder, integer_at_least, non_negative_number,  # noqa: E402
                                positive_number, refuse_repeats, require_output_folder, seed)
from janus_lab.experiment2d import (  # noqa: E402
    REQUESTED, LabViewSettings, format_shares, format_table, run_lab_view_experiment, save_results,
)
from janus_lab.model_files import model_path  # noqa: E402
from janus_lab.world import KINDS  # noqa: E402
from antijanus.prompting.dnp import load_sampler  # noqa: E402
from antijanus.tools.view2d import METHODS  # noqa: E402
from antijanus.utils.errors import ConfigError  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--views", nargs="+", choices=REQUESTED, default=list(REQUESTED))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=seed, default=list(range(50)))
    parser.add_argument("--negative-weights", nargs="+", type=non_negative_number, default=[1.0],
                        help="the first is the default row; further weights are extra rows")
    parser.add_argument("--steps", type=count, default=50)
    parser.add_argument("--scale", type=positive_number, default=7.5)
    parser.add_argument("--batch-size", type=count, default=25, help="seeds sampled together")
    parser.add_argument("--interpolation-steps", type=integer_at_least(0), default=9,
                        help="0 = no interpolation grid")
    parser.add_argument("--prior", type=existing_folder, default=model_path("prior"))
    parser.add_argument("--judge", type=existing_folder, default=model_path("judge"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=integer_at_least(0), default=1,
                        help="torch CPU threads (default 1: on the shared 2-core CPU one thread was several times "
                             "faster than two; 0: torch's default)")
    parser.add_argument("--out", default="outputs/lab-view2d")
    return parser


def parse_args(argv=None):
    """The arguments and the experiment's settings, every one checked (one line and exit 2
    otherwise) before any model is loaded: counts and numbers, no value listed twice, the output folder."""
    parser = make_parser()
    args = parser.parse_args(argv)
    refuse_repeats(parser, args, ("--kinds", "--views", "--methods", "--seeds", "--negative-weights"))
    try:
        settings = LabViewSettings(kinds=args.kinds, views=args.views, methods=args.methods, seeds=args.seeds,
                                   negative_weights=args.negative_weights, steps=args.steps,
                                   guidance_scale=args.scale, batch_size=args.batch_size,
                                   interpolation_steps=args.interpolation_steps).validate()
    except ConfigError as error:
        parser.error(str(error))
    require_output_folder(parser, "--out", args.out)
    return args, settings


def main(argv=None) -> int:
    args, settings = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.time()
    try:
        sampler, _ = load_sampler(args.prior, torch.device(args.device), half_precision=False, key="--prior")
        classifier = JudgeViewClassifier.load(args.judge, device=args.device)
    except ConfigError as error:  # a folder that is not the model it names
        print(f"lab_view_experiment_2d.py: error: {error}", file=sys.stderr)
        return 2
    result = run_lab_view_experiment(sampler, classifier, settings)
    result["timings"]["wall_s"] = time.time() - start
    save_results(result, args.out)
    for group in [*settings.kinds, "all"]:
        print(format_table(result["table"], group) + "\n")
    print(format_shares(result["table"]) + "\n")
    if result["interpolation"]:
        for kind, judged in result["interpolation"]["judged"].items():
            print(f"interpolation {kind}: " + ", ".join(
                f"{a:.0f}->{j}" for a, j in zip(result["interpolation"]["azimuths"], judged)))
    t = result["timings"]
    print(f"{t['images']} images sampled in {t['sampling_s']:.0f} s; {time.time() - start:.0f} s in all; "
          f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
