#!/usr/bin/env python
"""View-consistency metrics of a finished threestudio run (antijanus.tools.evaluate / antijanus.tools.metrics).

From the run's checkpoint (renders 100 views at one elevation with threestudio's own
`launch.py --test`; run it from the threestudio checkout):

    python $ANTIJANUS/scripts/run_metrics.py outputs/perp-neg-nerf-sd/a_corgi@... \
        --lpips-backbone ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth --distractors "a cat" "a car"

From renders that already exist (the newest `save/it<step>-test/` of the run, or any folder of
`<index>.png` renders of a uniform orbit): add `--no-render` (and `--prompt` for a plain folder).

Computes A-LPIPS, the CLIP similarity of every azimuth to each view-augmented prompt, and CLIP
R-precision against the distractors. Writes `metrics.json` into the run folder (scripts/sweep.py
collects it), `clip_per_azimuth.csv`, and `clip_per_azimuth.png` (front and back regions shaded,
as D-SDS Fig. 5) when matplotlib is there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.utils.errors import ConfigError  # noqa: E402
from antijanus.tools.evaluate import MetricSettings, evaluate_run  # noqa: E402
from antijanus.tools.metrics import LPIPS_NETS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a threestudio trial folder, or a folder of <index>.png renders")
    parser.add_argument("--prompt", help="default: the run's system.prompt_processor.prompt")
    parser.add_argument("--phrases", nargs=3, default=["front view", "side view", "back view"],
                        metavar=("FRONT", "SIDE", "BACK"), help="view phrases appended to the prompt")
    parser.add_argument("--distractors", nargs="*", default=[], help="prompts for R-precision")
    parser.add_argument("--clip", default="openai/clip-vit-base-patch32",
                        help="transformers CLIP hub id or folder, or open_clip:<arch>[@<pretrained tag or file>]")
    parser.add_argument("--lpips-net", choices=LPIPS_NETS, default="vgg", help="vgg (the D-SDS notebook) or alex")
    parser.add_argument("--lpips-backbone", help="torchvision vgg16 / alexnet state dict (.pth)")
    parser.add_argument("--lpips-lin", help="the lpips package's weights/v0.1/<net>.pth")
    parser.add_argument("--random-lpips", "--random-weights", dest="random_lpips", action="store_true",
                        help="random LPIPS weights, no weight files needed (tests / timing on a CPU only)")
    parser.add_argument("--preprocess", choices=["none", "dsds-notebook"], default="dsds-notebook")
    parser.add_argument("--front", type=float, default=45.0, help="front half-width for the shading")
    parser.add_argument("--back", type=float, default=45.0)
    parser.add_argument("--no-render", action="store_true", help="use existing renders, not the checkpoint")
    parser.add_argument("--n-views", type=int, default=100, help="azimuths of the rendered orbit")
    parser.add_argument("--elevation", type=float, help="elevation of the orbit (default: the run's)")
    parser.add_argument("--launch", nargs="+", default=[sys.executable, "launch.py"],
                        help="threestudio's launcher, run from the current folder (default: python launch.py)")
    parser.add_argument("--device", help="default: cuda when available")
    parser.add_argument("--out", help="where to write (default: the run folder)")
    args = parser.parse_args()
    try:
        settings = MetricSettings.from_dict(dict(
            prompt=args.prompt, phrases=dict(zip(["front", "side", "back"], args.phrases)),
            distractors=args.distractors, clip_model=args.clip, lpips_net=args.lpips_net,
            lpips_backbone=args.lpips_backbone, lpips_lin=args.lpips_lin, random_lpips=args.random_lpips,
            preprocess=args.preprocess, front_half_width=args.front, back_half_width=args.back,
            render=not args.no_render, n_views=args.n_views, elevation_deg=args.elevation, device=args.device))
        metrics = evaluate_run(args.run, settings, launch=args.launch, out=args.out)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
