#!/usr/bin/env python
"""Run an ablation sweep of threestudio runs and collect their metrics (antijanus.tools.sweep).

    python $ANTIJANUS/scripts/sweep.py sweep.yaml --dry-run          # list the runs to launch
    python $ANTIJANUS/scripts/sweep.py sweep.yaml                    # sequentially
    python $ANTIJANUS/scripts/sweep.py sweep.yaml --gpus 0 1 2 3     # one run per local GPU
    python $ANTIJANUS/scripts/sweep.py sweep.yaml --slurm slurm_partition=gpu timeout_min=600 gpus_per_node=1
    python $ANTIJANUS/scripts/sweep.py sweep.yaml --collect-only     # metrics, results.csv + results.md

Run it from the threestudio checkout (the `launch` command of the sweep file is run there).
Finished runs are skipped; with a `metrics:` block every run also renders its test orbit from its
checkpoint, and collecting computes A-LPIPS / CLIP metrics of the runs that have none yet. After
`--slurm`, run `--collect-only` once the array has finished. See antijanus/tools/sweep/spec.py for the
sweep file format and antijanus/tools/evaluate.py (MetricSettings) for the metrics keys.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.utils.errors import ConfigError  # noqa: E402
from antijanus.tools.sweep import (  # noqa: E402
    Sweep, SweepFailed, collect, dry_run_command, parse_slurm_parameters, run_sweep, submit_slurm,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep")
    parser.add_argument("--gpus", nargs="+", help="local GPU ids, one run at a time on each")
    parser.add_argument("--slurm", nargs="+", metavar="KEY=VALUE",
                        help="submitit AutoExecutor parameters for a SLURM array (timeout_min, gpus_per_node, "
                             "cpus_per_task, mem_gb, slurm_partition, slurm_array_parallelism, ...)")
    parser.add_argument("--cluster", help="submitit cluster: default SLURM; 'local' runs the array here")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--metrics", nargs="+", help="columns of the table and figure (default: the view-consistency "
                        "metrics and the losses that differ between runs; results.csv has every column)")
    args = parser.parse_args()
    status = 0
    try:
        sweep = Sweep.load(args.sweep)
        if not args.collect_only:
            if args.slurm:
                params = parse_slurm_parameters(args.slurm)
                jobs = submit_slurm(sweep, params, cluster=args.cluster)
                print(f"submitted {len(jobs)} runs as a job array; then run --collect-only")
                return 0
            total = len(sweep.runs())
            if args.dry_run:
                todo = run_sweep(sweep, dry_run=True)
                print(f"{len(todo)} of {total} runs to launch ({total - len(todo)} already done)")
                for run in todo:
                    print(dry_run_command(sweep, run))
                return 0
            try:
                todo = run_sweep(sweep, gpus=args.gpus)
                failed = 0
            except SweepFailed as error:  # the finished runs are still collected below
                todo, failed = error.launched, len(error.failures)
                for failure in error.failures:
                    print(failure.line(), file=sys.stderr)
                status = 1
            print(f"{len(todo)} of {total} runs launched ({total - len(todo)} already done"
                  + (f", {failed} failed" if failed else "") + ")")
        paths = collect(sweep, args.metrics)
        print(f"collected {paths['runs']} runs: {paths['csv']}, {paths['markdown']}"
              + "".join(f", {p}" for p in paths["plots"]))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
