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
`--slurm`, run `--collect-only` once the array has finished. See antijanus/tools/sweep.py for the sweep
file format and antijanus/tools/evaluate.py (MetricSettings) for the metrics keys.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.utils.errors import ConfigError  # noqa: E402
from antijanus.tools.sweep import Sweep, collect, parse_slurm_parameters, run_sweep, submit_slurm  # noqa: E402


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
    parser.add_argument("--metrics", nargs="+", help="columns of the table (default: all)")
    args = parser.parse_args()
    try:
        sweep = Sweep.load(args.sweep)
        if not args.collect_only:
            if args.slurm:
                params = parse_slurm_parameters(args.slurm)
                jobs = submit_slurm(sweep, params, cluster=args.cluster)
                print(f"submitted {len(jobs)} runs as a job array; then run --collect-only")
                return 0
            todo = run_sweep(sweep, gpus=args.gpus, dry_run=args.dry_run)
            total = len(sweep.runs())
            print(f"{len(todo)} of {total} runs {'to launch' if args.dry_run else 'launched'}"
                  f" ({total - len(todo)} already done)")
            if args.dry_run:
                for run in todo:
                    print(" ".join(run.command(sweep.launch, sweep.name, sweep.exp_root)))
                return 0
        paths = collect(sweep, args.metrics)
        print(f"collected {paths['runs']} runs: {paths['csv']}, {paths['markdown']}")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
