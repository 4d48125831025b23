"""Collecting a sweep: the metrics of every rendered run that has none yet (LPIPS and CLIP loaded
once), every finished run's last logged training metrics (threestudio's CSV logs) and its
``metrics.json``, written as the sweep's results (``report``)."""

from __future__ import annotations

import csv
import glob
import os
from typing import Dict, Iterable, List, Optional

from ...utils.cache import cache_key, read_json
from ...utils.errors import ConfigError
from ...utils.progress import progress_bar
from ..evaluate import MetricModels, evaluate_folder, newest_test_folder, orbit_folder, write_results
from .report import write_report
from .spec import Run, Sweep


def evaluate_runs(sweep: Sweep, progress: bool = True, models: Optional[MetricModels] = None) -> List[str]:
    """Compute the metrics of every finished run that has none for the sweep's current metric
    settings (recomputed when the settings change, or the given models' ``identity``). Returns
    the run tags evaluated. ``models``: already loaded models (e.g. with another view
    classifier); default: the settings' ones."""
    settings = sweep.metrics
    if settings is None:
        return []
    identity = getattr(models, "identity", None)
    key = cache_key(**settings.to_dict(), **({"models": identity} if identity else {}))
    todo = []
    for run in sweep.runs():
        if not run.done:
            continue
        existing = read_json(os.path.join(run.run_dir, "metrics.json")) or {}
        if existing.get("metric_settings") == key:
            continue
        folder = _orbit_to_evaluate(sweep, run)
        if folder is not None:
            todo.append((run, folder))
    if not todo:
        return []
    models = models or MetricModels(settings)
    bar = progress_bar(len(todo), f"metrics {sweep.name}", "run", progress)
    for run, folder in todo:
        metrics, rows = evaluate_folder(folder, settings.prompt or run.prompt, settings, models)
        write_results(run.run_dir, {**metrics, "metric_settings": key}, rows, settings, models.views.name)
        bar.update(1)
    bar.close()
    return [run.tag for run, _ in todo]


def _orbit_to_evaluate(sweep: Sweep, run: Run) -> Optional[str]:
    """The run's orbit rendered from its checkpoint (``metrics.render``) or the newest test
    renders training wrote; None when there is none."""
    settings = sweep.metrics
    if settings.render:
        return orbit_folder(run.run_dir, settings.n_views, settings.elevation_deg)
    try:
        return newest_test_folder(run.run_dir)
    except ConfigError:
        return None


def last_metrics(run_dir: str) -> Dict[str, float]:
    """The last logged value of every numeric metric of a threestudio run (CSV logs), plus the
    entries of ``metrics.json`` in the run folder."""
    values: Dict[str, float] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "csv_logs", "version_*", "metrics.csv"))):
        with open(path) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key in ("step", "epoch") or value in ("", None):
                        continue
                    try:
                        values[key] = float(value)
                    except ValueError:
                        pass
    extra = read_json(os.path.join(run_dir, "metrics.json")) or {}
    values.update({k: float(v) for k, v in extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return values


def collect(sweep: Sweep, metrics: Optional[Iterable[str]] = None, progress: bool = True,
            models: Optional[MetricModels] = None) -> Dict[str, str]:
    """Evaluate the runs that need it (``evaluate_runs``, with ``models`` when given: another
    view classifier, extra metrics), then write <out>/<name>/results.csv (one row per finished
    run, every logged column), results.md (mean +- std over seeds per variant and prompt of
    ``metrics``, default ``report.summary_keys``) and results.png (one panel per column).
    Returns the paths."""
    evaluate_runs(sweep, progress, models)
    rows = [{"variant": run.variant, "prompt": run.prompt, "seed": run.seed, **last_metrics(run.run_dir)}
            for run in sweep.runs() if run.done]
    return write_report(sweep.name, os.path.join(sweep.out, sweep.name), rows, metrics)
