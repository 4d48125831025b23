"""Metrics of a finished threestudio run, from its checkpoint or from a folder of renders.

- ``render_run_orbit``: threestudio's own ``launch.py --test`` on the run's ``configs/parsed.yaml`` and
  checkpoint, with ``data.n_test_views`` (default 100, the D-SDS paper's A-LPIPS orbit) and
  optionally ``data.eval_elevation_deg`` overridden. The renders go to their own trial folder,
  ``<run>/metrics/orbit-n<N>[-e<E>]/save/it<step>-test/``, so they never mix with the 120 test
  views that training wrote at its end.
- ``evaluate_folder``: A-LPIPS, the per-azimuth CLIP table and CLIP R-precision of an orbit.
- ``evaluate_run``: both, for a trial folder; writes ``metrics.json`` (which the sweep collects),
  ``clip_per_azimuth.csv`` and the shaded per-azimuth plot (D-SDS Fig. 5).
"""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf

from ..utils.cache import write_json
from ..utils.errors import ConfigError, require_choice
from .metrics import (
    LPIPS,
    LPIPS_NETS,
    PhraseViewClassifier,
    ViewClassifier,
    a_lpips,
    load_clip_scorer,
    load_orbit,
    per_azimuth_views,
    r_precision,
    view_of_azimuth,
)

VIEW_ORDER = ("front", "side", "back")
RENDERED_MARKER = ".antijanus-rendered"  # written into an orbit's trial folder once it is complete


@dataclass
class MetricSettings:
    """Everything the metrics of one run depend on (the ``metrics:`` block of a sweep file)."""

    # the run's own prompt (system.prompt_processor.prompt of its parsed.yaml) when None
    prompt: Optional[str] = None
    # view phrases appended to the prompt for the per-azimuth CLIP table
    phrases: Dict[str, str] = field(default_factory=lambda: {
        "front": "front view", "side": "side view", "back": "back view"})
    # prompts the render competes with for CLIP R-precision (none: R-precision is skipped)
    distractors: List[str] = field(default_factory=list)
    # CLIP: a transformers hub id or folder, or "open_clip:<arch>[@<pretrained tag or file>]"
    clip_model: str = "openai/clip-vit-base-patch32"
    lpips_net: str = "vgg"  # vgg (the D-SDS notebook) | alex (the lpips package's default)
    lpips_backbone: Optional[str] = None  # torchvision vgg16 / alexnet state dict (.pth)
    lpips_lin: Optional[str] = None  # the lpips package's weights/v0.1/<net>.pth
    random_lpips: bool = False  # random LPIPS weights: tests and timing only
    preprocess: str = "dsds-notebook"  # none | dsds-notebook (CLIP-style 224 crops before LPIPS)
    front_half_width: float = 45.0  # degrees around azimuth 0 shaded / averaged as "front"
    back_half_width: float = 45.0  # degrees around azimuth 180 shaded / averaged as "back"
    # rendering from the checkpoint
    render: bool = True  # False: use the newest save/it<step>-test folder that training wrote
    n_views: int = 100
    elevation_deg: Optional[float] = None  # None: the run's data.eval_elevation_deg
    device: Optional[str] = None  # None: cuda when available, else cpu

    @classmethod
    def from_dict(cls, data: Optional[Mapping]) -> "MetricSettings":
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError(f"metrics.{key}", data[key], "unknown metrics key", known)
        settings = cls(**data)
        settings.check()
        return settings

    def check(self) -> None:
        if isinstance(self.distractors, str) or not isinstance(self.distractors, (list, tuple)) or \
                not all(isinstance(d, str) for d in self.distractors):
            raise ConfigError("metrics.distractors", self.distractors, 'must be a list of prompts, e.g. ["a cat", "a car"]')
        if not isinstance(self.phrases, Mapping) or not all(isinstance(p, str) for p in self.phrases.values()):
            raise ConfigError("metrics.phrases", self.phrases, "maps view names to phrases", list(VIEW_ORDER))
        if not isinstance(self.clip_model, str) or not self.clip_model:
            raise ConfigError("metrics.clip_model", self.clip_model, "a CLIP hub id or folder, or open_clip:<arch>")
        require_choice("metrics.lpips_net", self.lpips_net, LPIPS_NETS)
        require_choice("metrics.preprocess", self.preprocess, ("none", "dsds-notebook"))
        if isinstance(self.n_views, bool) or not isinstance(self.n_views, int):
            raise ConfigError("metrics.n_views", self.n_views, "must be an integer (azimuths of the orbit)")
        if self.n_views < 2:
            raise ConfigError("metrics.n_views", self.n_views, "an orbit needs at least 2 views")
        unknown = sorted(set(self.phrases) - set(VIEW_ORDER))
        if unknown or not self.phrases:
            raise ConfigError("metrics.phrases", dict(self.phrases), "maps view names to phrases", list(VIEW_ORDER))
        if self.prompt is not None and not str(self.prompt).strip():
            raise ConfigError("metrics.prompt", self.prompt, "must not be empty (leave unset for the run's prompt)")

    def to_dict(self) -> Dict:
        return asdict(self)


def run_config(run_dir: str) -> str:
    path = os.path.join(run_dir, "configs", "parsed.yaml")
    if not os.path.exists(path):
        raise ConfigError("run", run_dir, "is not a threestudio trial folder (no configs/parsed.yaml)")
    return path


def run_prompt(run_dir: str) -> str:
    """The prompt a threestudio run was trained with."""
    cfg = OmegaConf.load(run_config(run_dir))
    prompt = OmegaConf.select(cfg, "system.prompt_processor.prompt")
    if not prompt:
        raise ConfigError("prompt", prompt, f"{run_dir} has no system.prompt_processor.prompt; pass one")
    return str(prompt)


def find_checkpoint(run_dir: str) -> str:
    """``ckpts/last.ckpt``, else the checkpoint of the highest step."""
    folder = os.path.join(run_dir, "ckpts")
    last = os.path.join(folder, "last.ckpt")
    if os.path.exists(last):
        return last
    found = glob.glob(os.path.join(folder, "*.ckpt"))
    if not found:
        raise ConfigError("checkpoint", folder, "no checkpoint (*.ckpt) in the run folder")

    def step(path: str) -> int:
        match = re.search(r"step=(\d+)", os.path.basename(path))
        return int(match.group(1)) if match else -1

    return max(found, key=step)


def newest_test_folder(folder: str) -> str:
    """The ``save/it<step>-test`` folder of the highest step under a trial folder (or the folder
    itself when it holds numbered renders)."""
    if os.path.isdir(folder) and any(re.fullmatch(r"\d+\.png", f) for f in os.listdir(folder)):
        return folder
    found = glob.glob(os.path.join(folder, "save", "it*-test"))
    if not found:
        raise ConfigError("run", folder, "has no save/it<step>-test folder of test renders")
    return max(found, key=lambda f: int(re.search(r"it(\d+)-test$", f).group(1)))


def orbit_tag(n_views: int, elevation_deg: Optional[float]) -> str:
    return f"orbit-n{int(n_views)}" + ("" if elevation_deg is None else f"-e{elevation_deg:g}")


def orbit_trial(run_dir: str, n_views: int, elevation_deg: Optional[float]) -> str:
    return os.path.join(run_dir, "metrics", orbit_tag(n_views, elevation_deg))


def _checkpoint_stamp(run_dir: str, checkpoint: str) -> str:
    """Which checkpoint an orbit was rendered from (relative to the run, so that a run folder
    copied with its times, e.g. rsync -a from a cluster, keeps its renders)."""
    stat = os.stat(checkpoint)
    return f"{os.path.relpath(checkpoint, run_dir)} {stat.st_size} {int(stat.st_mtime)}"


def orbit_folder(run_dir: str, n_views: int = 100, elevation_deg: Optional[float] = None) -> Optional[str]:
    """The folder of a completely rendered orbit of the run's current checkpoint, or None (not
    rendered, interrupted, or the checkpoint changed since, e.g. the run was resumed)."""
    marker = os.path.join(orbit_trial(run_dir, n_views, elevation_deg), RENDERED_MARKER)
    if not os.path.exists(marker):
        return None
    try:
        stamp = _checkpoint_stamp(run_dir, find_checkpoint(run_dir))
    except ConfigError:
        return None
    with open(marker) as f:
        folder, _, rendered_from = f.read().rstrip("\n").partition("\n")
    folder = os.path.join(run_dir, folder)
    return folder if rendered_from == stamp and os.path.isdir(folder) else None


def render_run_orbit_command(run_dir: str, launch: Sequence[str], n_views: int = 100,
                             elevation_deg: Optional[float] = None, checkpoint: Optional[str] = None) -> List[str]:
    """threestudio's ``launch.py --test`` for the run's checkpoint, into <run>/metrics/<orbit tag>."""
    command = list(launch) + [
        "--config", run_config(run_dir), "--test", f"resume={checkpoint or find_checkpoint(run_dir)}",
        f"exp_root_dir={run_dir}", "name=metrics", f"tag={orbit_tag(n_views, elevation_deg)}",
        "use_timestamp=false", "timestamp=''", f"data.n_test_views={int(n_views)}",
    ]
    if elevation_deg is not None:
        command.append(f"data.eval_elevation_deg={elevation_deg}")
    return command


def render_run_orbit(run_dir: str, launch: Sequence[str], n_views: int = 100, elevation_deg: Optional[float] = None,
                     checkpoint: Optional[str] = None, cwd: Optional[str] = None,
                     env: Optional[Mapping[str, str]] = None) -> str:
    """Render the orbit from the checkpoint (run from the threestudio folder ``cwd``); returns the
    folder of renders. An earlier, possibly interrupted render of the same orbit is replaced."""
    checkpoint = checkpoint or find_checkpoint(run_dir)
    command = render_run_orbit_command(run_dir, launch, n_views, elevation_deg, checkpoint)
    trial = orbit_trial(run_dir, n_views, elevation_deg)
    shutil.rmtree(trial, ignore_errors=True)
    os.makedirs(trial)
    log_path = trial + ".log"
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=cwd, env=None if env is None else dict(env),
                                stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"rendering the test orbit failed (exit {result.returncode}), see {log_path}")
    folder = newest_test_folder(trial)
    count = sum(1 for f in os.listdir(folder) if re.fullmatch(r"\d+\.png", f))
    if count != int(n_views):
        raise RuntimeError(f"expected {n_views} renders in {folder}, found {count}; see {log_path}")
    with open(os.path.join(trial, RENDERED_MARKER), "w") as f:
        f.write(f"{os.path.relpath(folder, run_dir)}\n{_checkpoint_stamp(run_dir, checkpoint)}\n")
    return folder


class MetricModels:
    """LPIPS, CLIP and the view classifier, loaded once for many runs. The view classifier scores
    each render's view for the per-azimuth table (default: CLIP zero-shot with the settings'
    phrases; any ``metrics.ViewClassifier`` can be given instead). CLIP is loaded when first
    needed (the default classifier, R-precision)."""

    def __init__(self, settings: MetricSettings, view_classifier: Optional[ViewClassifier] = None,
                 extra_metrics: Optional[Callable[[Any, Any, str], Mapping[str, float]]] = None,
                 identity: Optional[str] = None):
        """``extra_metrics(frames [N, 3, H, W], azimuths [N], prompt) -> {name: value}``: more
        per-run metrics of the orbit (e.g. a Janus metric), merged into each run's metrics.
        ``identity``: what a given classifier / extra metrics are (e.g. their weights'
        fingerprint); part of the sweep's metrics cache key, so that runs evaluated with other
        models are evaluated again (the settings alone name only the default models)."""
        self.settings = settings
        self.identity = identity
        self.extra_metrics = extra_metrics
        self.device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.lpips = LPIPS(settings.lpips_net, settings.lpips_backbone, settings.lpips_lin,
                           random_weights=settings.random_lpips,
                           keys=("metrics.lpips_backbone", "metrics.lpips_lin")).to(self.device)
        self._clip = None
        self.views = view_classifier or PhraseViewClassifier(_Lazy(lambda: self.clip), settings.phrases)

    @property
    def clip(self):
        if self._clip is None:
            self._clip = load_clip_scorer(self.settings.clip_model, device=self.device, key="metrics.clip_model")
        return self._clip


class _Lazy:
    """A scorer loaded on first use."""

    def __init__(self, load):
        self._load = load

    def similarity(self, images, texts):
        return self._load().similarity(images, texts)


def evaluate_folder(folder: str, prompt: str, settings: MetricSettings,
                    models: Optional[MetricModels] = None) -> Tuple[Dict[str, float], List[Dict[str, float]]]:
    """A-LPIPS, CLIP R-precision and, per view, the mean view score (CLIP similarity to the view
    prompt, or the given view classifier's score) inside its own azimuth region; plus the
    per-azimuth rows."""
    models = models or MetricModels(settings)
    frames, azimuths = load_orbit(folder)
    frames = frames.to(models.device)
    mean_lpips, _ = a_lpips(frames, models.lpips, preprocess=settings.preprocess)
    views = [view for view in VIEW_ORDER if view in settings.phrases]
    rows = per_azimuth_views(models.views, frames, azimuths, prompt, views)
    metrics: Dict[str, float] = {"a_lpips": mean_lpips, "n_views": len(frames)}
    if models.extra_metrics is not None:
        metrics.update({k: float(v) for k, v in models.extra_metrics(frames, azimuths, prompt).items()})
    if settings.distractors:
        metrics["clip_r_precision"] = r_precision(models.clip, frames, prompt, settings.distractors)
    regions = view_of_azimuth(azimuths, settings.front_half_width, settings.back_half_width)
    for view in views:
        inside = [row[view] for row, region in zip(rows, regions) if region == view]
        if inside:
            metrics[f"{models.views.name}_{view}_in_region"] = sum(inside) / len(inside)
    return metrics, rows


def evaluate_run(run_dir: str, settings: MetricSettings, launch: Optional[Sequence[str]] = None,
                 cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                 models: Optional[MetricModels] = None, out: Optional[str] = None) -> Dict[str, float]:
    """Evaluate a trial folder: its orbit rendered from the checkpoint (``settings.render``; a
    complete render of the current checkpoint is reused, else ``launch`` renders it) or its newest
    test renders; or a plain folder of renders. Writes the results into ``out`` (default: the run
    folder)."""
    is_trial = os.path.exists(os.path.join(run_dir, "configs", "parsed.yaml"))
    if settings.render and is_trial:
        if not launch:
            raise ConfigError("launch", launch, "rendering from the checkpoint needs the launch command")
        folder = orbit_folder(run_dir, settings.n_views, settings.elevation_deg) or render_run_orbit(
            run_dir, launch, settings.n_views, settings.elevation_deg, cwd=cwd, env=env)
    else:
        folder = newest_test_folder(run_dir)
    prompt = settings.prompt or run_prompt(run_dir)
    models = models or MetricModels(settings)
    metrics, rows = evaluate_folder(folder, prompt, settings, models)
    write_results(out or run_dir, metrics, rows, settings, models.views.name)
    return metrics


def write_results(out: str, metrics: Mapping[str, float], rows: List[Dict[str, float]],
                  settings: MetricSettings, classifier: str = "clip") -> None:
    """``<classifier>_per_azimuth.csv`` and its plot, then ``metrics.json``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{classifier}_per_azimuth.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_per_azimuth(rows, os.path.join(out, f"{classifier}_per_azimuth.png"),
                     settings.front_half_width, settings.back_half_width,
                     "CLIP similarity" if classifier == "clip" else f"{classifier} view score")
    # metrics.json last and atomically: its presence means the evaluation finished
    write_json(os.path.join(out, "metrics.json"), dict(metrics))


def plot_per_azimuth(rows: List[Dict[str, float]], path: str, front: float, back: float,
                     ylabel: str = "CLIP similarity") -> Optional[str]:
    """CLIP similarity of every azimuth to each view prompt, front and back regions shaded
    (D-SDS Fig. 5); None when matplotlib is not installed."""
    try:
        import matplotlib  # optional: matplotlib, for the plot only

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional: matplotlib
    except ImportError:
        return None
    azimuths = [r["azimuth"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.axvspan(0, front, color="tab:blue", alpha=0.12, label="front region")
    ax.axvspan(360 - front, 360, color="tab:blue", alpha=0.12)
    ax.axvspan(180 - back, 180 + back, color="tab:red", alpha=0.12, label="back region")
    for view in [k for k in rows[0] if k != "azimuth"]:
        ax.plot(azimuths, [r[view] for r in rows], label=view)
    ax.set_xlabel("azimuth (degrees)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
