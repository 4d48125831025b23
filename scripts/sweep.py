#!/usr/bin/env python
"""Run an ablation sweep of threestudio runs and collect their metrics (antijanus.tools.sweep).

    python $ANTIJANUS/scripts/sweep.py sweep.yaml --dry-run          # list the runs to launch
    python $ANTIJANUS/scripts/sweep.py sweep.yaml                    # sequentially
    python $ANTIJANUS/scripts/sweep.py sweep.yaml --gpus 0 1 2 3     # one run per local GPU
    python $ANTIJANUS/scripts/sweep.py sweep.yaml --slurm slurm_partition=gpu timeout_min=600 gpus_per_node=1
    python $ANTIJANUS/scripts/sweep.py sweep.yaml --collect-only     # metrics, results.csv + results.md

Run it from the threestudio checkout (the `launch` command of the sweep file is run there).
Runs finished with the same settings (exact prompt, seed, overrides, config contents: each run's
folder is named by a hash of them) are skipped; with a `metrics:` block every run also renders
its test orbit from its checkpoint, and collecting computes A-LPIPS / CLIP metrics of the runs
that have none yet. After `--slurm`, run `--collect-only` once the array has finished (with no
finished run it says so and exits 1). See antijanus/tools/sweep/spec.py for the sweep file format
and antijanus/tools/evaluate.py (MetricSettings) for the metrics keys.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.utils.errors import ConfigError  # noqa: E402
from antijanus.tools.sweep import (  # noqa: E402
    Sweep, SweepFailed, collect, dry_run_command, parse_slurm_parameters, run_sweep, submit_slurm,
)


GPU_ID = r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+"  # what CUDA_VISIBLE_DEVICES takes: an index or a UUID


def gpu_id(text: str) -> str:
    """One --gpus item: a GPU index (0, 1, ...) or UUID; -1 would hide every GPU from the run."""
    if not re.fullmatch(GPU_ID, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU: give indices 0, 1, ... (or GPU-/MIG- UUIDs)")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep")
    parser.add_argument("--gpus", nargs="+", type=gpu_id, help="local GPU ids, one run at a time on each")
    parser.add_argument("--slurm", nargs="+", metavar="KEY=VALUE",
                        help="submitit AutoExecutor parameters for a SLURM array (timeout_min, gpus_per_node, "
                             "cpus_per_task, mem_gb, slurm_partition, slurm_array_parallelism, ...)")
    parser.add_argument("--cluster", help="submitit cluster: default SLURM; 'local' runs the array here")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--metrics", nargs="+", help="columns of the table and figure (default: the view-consistency "
                        "metrics and the losses that differ between runs; results.csv has every column)")
    args = parser.parse_args(argv)
    for option in ("gpus", "metrics"):
        values = getattr(args, option) or []
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            parser.error(f"argument --{option}: {twice[0]} is given twice")
    return args


def launch(sweep: Sweep, args: argparse.Namespace) -> int:
    """Run the sweep's runs that are not done (printing what happened); the exit status so far."""
    total = len(sweep.runs())
    try:
        todo, failed, status = run_sweep(sweep, gpus=args.gpus), 0, 0
    except SweepFailed as error:  # the finished runs are still collected
        todo, failed, status = error.launched, len(error.failures), 1
        for failure in error.failures:
            print(failure.line(), file=sys.stderr)
    print(f"{len(todo)} of {total} runs launched ({total - len(todo)} already done"
          + (f", {failed} failed" if failed else "") + ")")
    return status


def report(sweep: Sweep, args: argparse.Namespace) -> int:
    """Collect the finished runs; with none, say so (exit status 1) and write nothing."""
    runs = sweep.runs()
    if not any(run.done for run in runs):
        print(f"error: no finished run of sweep {sweep.name} in {os.path.join(sweep.exp_root, sweep.name)} "
              f"(0 of {len(runs)} runs with the current settings): nothing to collect", file=sys.stderr)
        return 1
    paths = collect(sweep, args.metrics)
    print(f"collected {paths['runs']} runs: {paths['csv']}, {paths['markdown']}"
          + "".join(f", {p}" for p in paths["plots"]))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sweep = Sweep.load(args.sweep)
        if args.collect_only:
            return report(sweep, args)
        if args.slurm:
            jobs = submit_slurm(sweep, parse_slurm_parameters(args.slurm), cluster=args.cluster)
            print(f"submitted {len(jobs)} runs as a job array; then run --collect-only")
            return 0
        if args.dry_run:
            todo, total = run_sweep(sweep, dry_run=True), len(sweep.runs())
            print(f"{len(todo)} of {total} runs to launch ({total - len(todo)} already done)")
            for run in todo:
                print(dry_run_command(sweep, run))
            return 0
        status = launch(sweep, args)
        return max(status, report(sweep, args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
