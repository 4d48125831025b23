#!/usr/bin/env python
"""The lab's 3D experiment, fast path: every method x prompt x seed trained on a small voxel
volume with the real guidance code, each orbit judged; one table (Janus rate with 95 % Wilson
intervals, view accuracy, a_jfd) and one orbit grid per variant.

    python custom/janus_lab/scripts/lab_experiment_3d.py --out outputs/lab-3d --jobs 2
    python custom/janus_lab/scripts/lab_experiment_3d.py --out outputs/lab-3d --report-only      # table from finished runs
    python custom/janus_lab/scripts/lab_experiment_3d.py --out outputs/lab-3d-calibration --calibrate \
        --volume-options grid48 grid24 pyramid --steps-options 300 600 --lr-options 0.03 0.1
                                                                  # the baseline alone
    python custom/janus_lab/scripts/lab_experiment_3d.py --out outputs/lab-3d-vsd --variants baseline vsd vsd-perp-neg \
        --cameras prior --guidance-scale 7.5                      # VSD variants: only when named

Finished runs are kept (re-running continues where it stopped). See README, "The 3D experiment".
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout
from antijanus.utils.errors import ConfigError  # noqa: E402
from janus_lab.cli_args import (count, existing_folder, integer_at_least, positive_number,  # noqa: E402
                                refuse_repeats, require_output_folder, seed)
from janus_lab.experiment3d.calibration import CALIBRATION_VOLUMES, CalibrationGrid, calibrate  # noqa: E402
from janus_lab.experiment3d.experiment import Experiment  # noqa: E402
from janus_lab.experiment3d.lab_models import LabModels  # noqa: E402
from janus_lab.experiment3d.runs import RunsFailed  # noqa: E402
from janus_lab.experiment3d.settings import CAMERA_PRESETS, FastSettings  # noqa: E402
from janus_lab.experiment3d.variants import ALL_VARIANT_NAMES, VARIANT_NAMES, lab_prompts  # noqa: E402
from janus_lab.volume_orbits import kind_of  # noqa: E402

# options that list values: none may list one twice (a run would count twice, a setting run twice)
LIST_OPTIONS = ("--variants", "--prompts", "--seeds", "--steps-options", "--lr-options", "--guidance-scale-options",
                "--volume-options", "--camera-options")


def make_parser() -> argparse.ArgumentParser:
    defaults = FastSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/lab-3d")
    parser.add_argument("--variants", nargs="+", default=list(VARIANT_NAMES), choices=ALL_VARIANT_NAMES,
                        help="default: every SDS / SJC / DNP variant; the VSD ones (vsd, vsd-perp-neg, vsd-dsds-clip, "
                             "vsd-perp-neg-dsds) run only when named")
    parser.add_argument("--prompts", nargs="+", default=lab_prompts())
    parser.add_argument("--seeds", nargs="+", type=seed, default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=count, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--steps", type=count, default=defaults.steps)
    parser.add_argument("--lr", type=positive_number, default=defaults.lr)
    parser.add_argument("--volume", choices=sorted(CALIBRATION_VOLUMES), default=None,
                        help="the representation (default: FastSettings' own, the calibration's choice)")
    parser.add_argument("--guidance-scale", type=positive_number, default=defaults.guidance_scale,
                        help="every variant's guidance scale (default: FastSettings', the calibration's choice; "
                             "none there: each config's own)")
    parser.add_argument("--orbit-views", type=integer_at_least(2), default=defaults.orbit_views,
                        help="azimuths of each run's test orbit (at least 2)")
    parser.add_argument("--captioner", default=LabModels.default().captioner,
                        help="DNP captioner: a captioner plugin folder (default: the lab's) or a BLIP folder")
    parser.add_argument("--judge", type=existing_folder, default=LabModels.default().judge,
                        help="the judge folder (default: the lab's); finished runs judged by other weights are "
                             "judged again from their saved orbits, nothing is trained again")
    parser.add_argument("--report-only", action="store_true", help="only write the table and grids")
    parser.add_argument("--report-dir", default=None, help="where the table and grids go (default: --out)")
    parser.add_argument("--calibrate", action="store_true", help="the baseline at each --steps-options x --lr-options")
    parser.add_argument("--steps-options", nargs="+", type=count, default=[300, 600])
    parser.add_argument("--lr-options", nargs="+", type=positive_number, default=[0.03, 0.1])
    parser.add_argument("--guidance-scale-options", nargs="+", type=positive_number, default=None,
                        help="calibration: the shared guidance scales compared (default: --guidance-scale only)")
    parser.add_argument("--volume-options", nargs="+", choices=sorted(CALIBRATION_VOLUMES), default=None,
                        help="calibration: the representations compared (default: --volume only)")
    parser.add_argument("--cameras", choices=CAMERA_PRESETS, default=defaults.cameras,
                        help="the training and test cameras: threestudio's from the configs, or framed as the "
                             "prior's world photographs (README)")
    parser.add_argument("--camera-options", nargs="+", choices=CAMERA_PRESETS, default=None,
                        help="calibration: the camera presets compared (default: --cameras only)")
    parser.add_argument("--reconstruction-control", action="store_true",
                        help="calibration: the judge on known creatures fitted into the same representation "
                             "(lab.reconstruction); a failed control makes its settings ineligible")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, every one checked (one line and exit 2 otherwise) before any run: counts and
    numbers, no value listed twice, the settings, the prompts' kinds, the output folder."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.calibrate and args.report_only:
        parser.error("--report-only and --calibrate: give one (the calibration runs what is not finished)")
    if args.report_dir and not args.report_only:
        parser.error("--report-dir goes with --report-only (a run writes its table into --out)")
    for option, given in (("--camera-options", args.camera_options),
                          ("--reconstruction-control", args.reconstruction_control)):
        if given and not args.calibrate:
            parser.error(f"{option} goes with --calibrate")
    refuse_repeats(parser, args, LIST_OPTIONS)
    args.prompts_given = "--prompts" in (argv or sys.argv)  # the calibration's default prompts otherwise
    try:
        for prompt in args.prompts:
            kind_of(prompt)
        args.settings, args.models = settings_of(args), models_of(args)
        # the calibration's experiments check their prompts and seeds alike
        args.experiment = Experiment(args.out, args.variants, args.prompts, tuple(args.seeds), args.settings,
                                     args.models)
        if args.calibrate:
            args.grid = grid_of(args)
            args.grid.points(args.settings)  # every setting of the grid checked before any run
    except ConfigError as error:
        parser.error(str(error))
    check_folders(parser, args)
    return args


def settings_of(args: argparse.Namespace) -> FastSettings:
    return FastSettings(steps=args.steps, lr=args.lr, orbit_views=args.orbit_views,
                        guidance_scale=args.guidance_scale, cameras=args.cameras,
                        **({"volume": CALIBRATION_VOLUMES[args.volume]} if args.volume else {}))


def models_of(args: argparse.Namespace) -> LabModels:
    return LabModels(**{**LabModels.default().__dict__, "captioner": args.captioner, "judge": args.judge})


def grid_of(args: argparse.Namespace) -> CalibrationGrid:
    return CalibrationGrid(args.steps_options, args.lr_options, volumes=args.volume_options,
                           guidance_scales=args.guidance_scale_options, camera_options=args.camera_options,
                           reconstruction=args.reconstruction_control)


def check_folders(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--report-only: finished runs in --out and a --report-dir it can write; else an --out it
    can write. Before any run or report."""
    if not args.report_only:
        require_output_folder(parser, "--out", args.out)
        return
    specs = args.experiment.specs()
    if not any(args.experiment.done(spec) for spec in specs):
        parser.error(f"argument --report-only: no finished runs in {args.out} for these variants, prompts, seeds "
                     f"and settings ({len(specs)} run(s) asked for)")
    require_output_folder(parser, "--report-dir", args.report_dir or args.out)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    try:
        if args.calibrate:
            prompts = args.prompts if args.prompts_given else None
            path = calibrate(args.out, args.grid, prompts, args.seeds, args.settings, args.models, args.jobs)
            print(open(path).read())
            print(f"calibration: {path} ({time.time() - start:.0f} s)")
            return 0
        paths = (args.experiment.report(out=args.report_dir) if args.report_only
                 else args.experiment.run(args.jobs))
    except RunsFailed as error:
        print(f"lab_experiment_3d.py: error: {error}", file=sys.stderr)
        return 1
    print(open(paths["markdown"]).read())
    for key, path in paths.items():
        print(f"{key}: {path}")
    print(f"wall time: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
