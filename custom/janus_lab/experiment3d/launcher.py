"""The launcher path's results (threestudio's own ``launch.py`` runs of a sweep,
``scripts/lab_sweep.py``) in the fast path's form, and the Janus metric as the sweep's
evaluation computes it for each orbit."""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List

import torch

from antijanus.tools.evaluate import orbit_folder
from antijanus.tools.metrics import load_orbit
from antijanus.utils.cache import read_json
from antijanus.utils.errors import ConfigError

from ..janus import orbit_metrics
from ..volume_orbits import kind_of


def janus_metrics_of_orbit(judge, elevation_deg: float) -> Callable[[torch.Tensor, torch.Tensor, str], Dict[str, float]]:
    """The extra metrics of a launcher run's orbit (``tools.evaluate.MetricModels(extra_metrics=)``):
    ``lab.janus.orbit_metrics`` at the orbit's elevation, with the prompted kind."""

    def metrics(frames: torch.Tensor, azimuths: torch.Tensor, prompt: str) -> Dict[str, float]:
        try:
            kind = kind_of(prompt)
        except ConfigError:
            kind = None
        return orbit_metrics(frames.cpu(), azimuths.cpu(), float(elevation_deg), judge, kind=kind)

    return metrics


def launcher_results(sweep) -> List[Dict[str, Any]]:
    """The finished, evaluated runs of a sweep (``tools.sweep.Sweep``) in the fast path's result
    form, with their orbit frames."""
    found = []
    m = sweep.metrics
    for run in sweep.runs():
        metrics = read_json(os.path.join(run.run_dir, "metrics.json")) or {}
        folder = orbit_folder(run.run_dir, m.n_views, m.elevation_deg) if m is not None else None
        if "janus" not in metrics or folder is None:
            continue
        frames, _ = load_orbit(folder)
        found.append({"variant": run.variant, "prompt": run.prompt, "seed": run.seed, "metrics": metrics,
                      "train_s": math.nan, "frames": frames})
    return found
