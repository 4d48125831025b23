"""Ablation sweeps: config overrides x prompts x seeds as threestudio runs, then one table.

- ``spec``: the sweep file (its format is documented there), checked when it is loaded, and its runs,
  each named by its identity (exact prompt, seed, overrides, config contents).
- ``launch``: running them, on local GPUs or as a SLURM job array (submitit); runs finished with
  the same identity are skipped, a failed run does not stop the others.
- ``collection``: the metrics of every rendered run, the last logged training metrics of every
  finished run, gathered into rows.
- ``report``: the rows as results.csv, results.md and results.png.
"""

from .collection import collect, evaluate_runs, last_metrics
from .launch import (
    RunFailure, StepFailed, SweepFailed, claim_folder, dry_run_command, execute_run, needs_work, orbit_missing,
    parse_slurm_parameters, run_sweep, submit_slurm, training_log,
)
from .report import EVALUATION_KEYS, MEASURED_DIAGNOSTICS, plot_metrics, summary_keys, write_report
from .spec import DONE_MARKER, IDENTITY_FILE, Run, Sweep, run_identity, run_tag

__all__ = [
    "DONE_MARKER", "EVALUATION_KEYS", "IDENTITY_FILE", "MEASURED_DIAGNOSTICS", "Run", "RunFailure", "StepFailed",
    "Sweep", "SweepFailed", "claim_folder", "collect", "dry_run_command", "evaluate_runs", "execute_run",
    "last_metrics", "needs_work", "orbit_missing", "parse_slurm_parameters", "plot_metrics", "run_identity",
    "run_sweep", "run_tag", "submit_slurm", "summary_keys", "training_log", "write_report",
]
