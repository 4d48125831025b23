#!/usr/bin/env python
"""The lab's 3D experiment, launcher path: every variant of custom/janus_lab/configs/janus-3d-sweep-latent.yaml
(or, --representation grid, janus-3d-sweep-grid.yaml; --representation rgb, janus-3d-sweep.yaml:
shipped configs + method overrides + the lab's models; the latent one on threestudio's Latent-NeRF
system, the grid one on the same system with threestudio's volume-grid geometry as the fast path's
latent24 voxel grid) trained by threestudio's own launch.py through the CPU mode, each run's test
orbit rendered from its checkpoint and judged by the lab judge; one table (Janus rate with 95 %
Wilson intervals, view accuracy, a_jfd) and one orbit grid per variant, beside the sweep's own
results.csv / results.md.

Run it from a threestudio checkout (the folder holding launch.py; threestudio importable) with
threestudio's environment:

    cd /path/to/threestudio && python $ANTIJANUS/custom/janus_lab/scripts/lab_sweep.py --jobs 2
    python $ANTIJANUS/custom/janus_lab/scripts/lab_sweep.py --cameras prior --guidance-scale 7.5 --jobs 2   # the fast path's setting
    python $ANTIJANUS/custom/janus_lab/scripts/lab_sweep.py --collect-only          # tables from finished runs
    python $ANTIJANUS/custom/janus_lab/scripts/lab_sweep.py --dry-run               # the commands

Finished runs are skipped when the sweep is run again. See README, "The 3D experiment".
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))  # the antijanus checkout
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout
from antijanus.tools.evaluate import MetricModels  # noqa: E402
from antijanus.tools.sweep import Sweep, SweepFailed, collect, dry_run_command, run_sweep  # noqa: E402
from antijanus.utils.cache import read_json  # noqa: E402
from antijanus.utils.errors import ConfigError  # noqa: E402
from janus_lab.cli_args import (count, existing_folder, folder_problem, integer_at_least, refuse_repeats,  # noqa: E402
                                seed)
from janus_lab.classifier import JudgeViewClassifier  # noqa: E402
from janus_lab.experiment3d.experiment import Experiment  # noqa: E402
from janus_lab.experiment3d.grids import orbit_grid  # noqa: E402
from janus_lab.experiment3d.launcher import janus_metrics_of_orbit, launcher_results  # noqa: E402
from janus_lab.experiment3d.settings import CAMERA_PRESETS, FastSettings, prior_camera_overrides  # noqa: E402
from janus_lab.experiment3d.tables import write_tables  # noqa: E402
from janus_lab.experiment3d.transfer import transfer, transfer_lines  # noqa: E402
from janus_lab.experiment3d.variants import VARIANT_NAMES  # noqa: E402
from janus_lab.locations import CONFIGS_ENV, SWEEP_CONFIG_DIR, lab_root, plugin_config_dir  # noqa: E402
from janus_lab.model_files import folder_fingerprint, model_path  # noqa: E402

SWEEPS = {  # the representation -> its sweep file (same variants, README: "The launcher path")
    "latent": os.path.join(SWEEP_CONFIG_DIR, "janus-3d-sweep-latent.yaml"),  # Latent-NeRF, the calibrated one
    "grid": os.path.join(SWEEP_CONFIG_DIR, "janus-3d-sweep-grid.yaml"),  # Latent-NeRF on a 24^3 volume-grid (latent24)
    "rgb": os.path.join(SWEEP_CONFIG_DIR, "janus-3d-sweep.yaml"),  # threestudio's NeRF (DreamFusion) system
}
RUNNER = os.path.join(REPO, "scripts", "threestudio_cpu.py")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--representation", choices=sorted(SWEEPS), default=None,
                        help="latent (default): the NeRF variants on threestudio's Latent-NeRF system at the "
                             "prior's latent size (custom/janus_lab/configs/janus-3d-sweep-latent.yaml, the fast path's "
                             "calibrated choice); grid: the same system on threestudio's volume-grid geometry, a dense 24^3 grid "
                             "as the fast path's latent24 voxel volume (janus-3d-sweep-grid.yaml); rgb: threestudio's "
                             "NeRF system at 32x32 (janus-3d-sweep.yaml)")
    parser.add_argument("--sweep", default=None, help="another sweep file (instead of --representation's)")
    parser.add_argument("--out", help="where the runs go (default: the sweep file's out, from here)")
    parser.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, help="a subset of the variants")
    parser.add_argument("--prompts", nargs="+", help="a subset of the prompts")
    parser.add_argument("--seeds", nargs="+", type=seed, help="seeds (default: the sweep file's)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more threestudio overrides for every run (e.g. trainer.max_steps=2 for a smoke run)")
    parser.add_argument("--cameras", choices=CAMERA_PRESETS, default="configs",
                        help="the training and test cameras: the configs' (threestudio's) or framed as the prior's "
                             "world photographs (the fast path's FastSettings.cameras, README)")
    parser.add_argument("--guidance-scale", type=positive_scale, default=None,
                        help="every variant's system.guidance.guidance_scale (default: each config's own, SD's "
                             "recipe 100); the fast path's --guidance-scale, e.g. the calibration's 7.5 (README)")
    parser.add_argument("--n-views", type=integer_at_least(3),
                        help="orbit views, at least 3: threestudio's orbit repeats its first view at the end "
                             "(default: the sweep file's metrics.n_views)")
    parser.add_argument("--jobs", type=count, default=1, help="runs at a time (one torch thread each when > 1)")
    parser.add_argument("--launch", nargs="+", help="the launch command (default: this python + the CPU runner)")
    parser.add_argument("--compare-fast", type=existing_folder, metavar="FOLDER",
                        help="a fast-path experiment folder (lab_experiment_3d.py --out) run at the same --cameras and "
                             "--guidance-scale: each launcher run beside its fast-path counterpart (transfer.md)")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments and the sweep they make (``args.loaded``), every one checked (one line and
    exit 2 otherwise) before any run: counts, no value listed twice, an --out it can write."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.sweep and args.representation:
        parser.error("--sweep and --representation both name the sweep file: give one")
    refuse_repeats(parser, args, ("--variants", "--prompts", "--seeds"))
    args.sweep = args.sweep or SWEEPS[args.representation or "latent"]
    lab_environment()
    try:
        args.loaded = load_sweep(args)
    except ConfigError as error:
        parser.error(str(error))
    problem = None if args.dry_run else folder_problem(args.loaded.out)
    if problem is not None:
        parser.error(f"argument --out: {problem}")
    return args


def lab_environment() -> None:
    """The lab's models, the shipped configs (the sweep files name them through CONFIGS_ENV) and
    no model hub, unless set."""
    os.environ.setdefault("JANUS_LAB_MODELS", lab_root())
    os.environ.setdefault(CONFIGS_ENV, plugin_config_dir())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_sweep(args: argparse.Namespace) -> Sweep:
    """The sweep file with the command line's choices applied."""
    sweep = Sweep.load(args.sweep)
    sweep.launch = list(args.launch or [sys.executable, RUNNER])
    if args.out:
        sweep.out = os.path.abspath(args.out)
    if args.variants:
        sweep.variants = {k: v for k, v in sweep.variants.items() if k in args.variants}
    if args.prompts:
        sweep.prompts = list(args.prompts)
    if args.seeds:
        sweep.seeds = list(args.seeds)
    if args.cameras == "prior":
        # its own sweep name, so that its tables stand apart (run folders differ anyway: their
        # names carry a hash of the run's overrides)
        sweep.name = f"{sweep.name}-cam-prior"
        sweep.overrides = sweep.overrides + prior_camera_overrides()
    if args.guidance_scale is not None:
        # a sweep of its own name, like --cameras
        sweep.name = f"{sweep.name}-gs{args.guidance_scale:g}"
        sweep.overrides = sweep.overrides + [f"system.guidance.guidance_scale={args.guidance_scale:g}"]
    sweep.overrides = sweep.overrides + list(args.set)
    if args.n_views is not None:
        sweep.metrics.n_views = args.n_views
    if sweep.metrics is None or sweep.metrics.elevation_deg is None:
        raise SystemExit("the sweep's metrics block must set elevation_deg (the orbit's elevation, for the judge)")
    return sweep


def launch_runs(sweep: Sweep, args: argparse.Namespace) -> Optional[SweepFailed]:
    """The sweep's runs through threestudio's launch.py; the failure, if runs failed."""
    root = threestudio_root()
    if root is None and not args.launch:
        raise SystemExit("lab_sweep.py: threestudio not found: run it from a threestudio checkout (the folder "
                         "holding launch.py) or with threestudio importable (README, \"The launcher path\")")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    if args.jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        run_sweep(sweep, gpus=[str(i) for i in range(args.jobs)] if args.jobs > 1 else None, env=env)
    except SweepFailed as error:
        print(error, file=sys.stderr)
        return error
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    sweep = args.loaded
    if args.dry_run:
        for run in run_sweep(sweep, dry_run=True):
            print(dry_run_command(sweep, run))
        return 0
    start = time.time()
    failed = None if args.collect_only else launch_runs(sweep, args)
    train_s = time.time() - start
    paths = collect_lab(sweep)
    print(open(paths["markdown"]).read())
    if args.compare_fast:
        paths["transfer"] = compare_fast(sweep, args)
        print(open(paths["transfer"]).read())
    for key, path in paths.items():
        print(f"{key}: {path}")
    print(f"wall time: {time.time() - start:.0f} s (runs {train_s:.0f} s)")
    return 1 if failed else 0


def positive_scale(text: str) -> float:
    """--guidance-scale, checked by the fast path's own rule (FastSettings.guidance_scale: finite, > 0)."""
    try:
        value = float(text)
        FastSettings(guidance_scale=value)
    except ValueError as error:  # float("x"), or FastSettings' ConfigError (a ValueError)
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def threestudio_root(cwd=None):
    """The folder holding the threestudio package, for the runs' PYTHONPATH: the checkout this is
    run from (launch.py and threestudio/ in it; ``python script.py`` does not put the working
    folder on sys.path), else wherever threestudio is installed (found, not imported); None if
    neither."""
    cwd = os.path.abspath(cwd or os.getcwd())
    if os.path.isfile(os.path.join(cwd, "launch.py")) and os.path.isfile(os.path.join(cwd, "threestudio", "__init__.py")):
        return cwd
    spec = importlib.util.find_spec("threestudio")
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(os.path.dirname(spec.origin))


def collect_lab(sweep):
    """The sweep's own collection with the judge (view classifier) and the Janus metric (extra
    metrics of each orbit), then the lab table and the orbit grids."""
    classifier = JudgeViewClassifier.load()
    extra = janus_metrics_of_orbit(classifier.judge, sweep.metrics.elevation_deg)
    # runs judged by another judge (retrained in place) are judged again
    models = MetricModels(sweep.metrics, view_classifier=classifier, extra_metrics=extra,
                          identity=f"lab-judge {folder_fingerprint(model_path('judge'))}")
    forget_metrics_without(sweep, "janus")
    paths = {f"sweep_{key}": value for key, value in collect(sweep, models=models, progress=False).items()}
    results = launcher_results(sweep)
    folder = os.path.join(sweep.out, sweep.name)
    paths.update(write_tables(results, folder, list(sweep.variants), list(sweep.prompts)))
    for variant in sweep.variants:
        grid = orbit_grid([r for r in results if r["variant"] == variant], folder, variant,
                          lambda r: r["frames"])
        if grid:
            paths[f"grid_{variant}"] = grid
    return paths


def compare_fast(sweep, args) -> str:
    """transfer.md in the sweep's folder: the launcher runs beside the fast path's (the same variants,
    prompts and seeds, the fast path's settings at this command's cameras and guidance scale),
    both judged by the lab's judge."""
    settings = FastSettings(cameras=args.cameras, **({} if args.guidance_scale is None
                                                     else {"guidance_scale": args.guidance_scale}))
    recorded = (read_json(os.path.join(args.compare_fast, "experiment.json")) or {}).get("settings")
    wanted = json.loads(json.dumps(settings.to_dict()))  # as experiment.json holds it (lists, not tuples)
    if recorded != wanted:
        differ = sorted(k for k in wanted if (recorded or {}).get(k) != wanted[k])
        raise SystemExit(f"--compare-fast {args.compare_fast}: its fast-path settings differ from this command's "
                         f"(--cameras, --guidance-scale, the fast path's defaults) in {differ or 'its experiment.json'}")
    fast = Experiment(args.compare_fast, list(sweep.variants), list(sweep.prompts), tuple(sweep.seeds), settings)
    report = transfer(launcher_results(sweep), fast.results(), list(sweep.variants))
    if not report["common"]:
        raise SystemExit(f"--compare-fast {args.compare_fast}: no finished run there has a launcher counterpart "
                         "(same variant, prompt, seed)")
    path = os.path.join(sweep.out, sweep.name, "transfer.md")
    with open(path, "w") as f:
        f.write("\n".join(transfer_lines(report)) + "\n")
    return path


def forget_metrics_without(sweep, key):
    """Runs evaluated before without the lab's metrics are evaluated again."""
    for run in sweep.runs():
        path = os.path.join(run.run_dir, "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                if key not in json.load(f):
                    os.remove(path)


if __name__ == "__main__":
    sys.exit(main())
