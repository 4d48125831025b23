"""A resumed run whose schedules stretch over another length than in the run it resumes.

With ``clip_end_step`` (and, for ``sqrt_anneal``, ``trainer_max_steps``) unset, the D-SDS clip
schedule and HiFA's annealing stretch over the running trainer's ``max_steps``. Nothing of the
guidance is saved in a checkpoint (its schedules are pure functions of the global step), so a
run resumed with another ``trainer.max_steps`` (raised to train longer) silently changes the
threshold at every step from the resumed one on. The run that wrote the checkpoint is known
from threestudio's layout, ``<trial>/ckpts/<name>.ckpt`` beside ``<trial>/configs/parsed.yaml``
(the resolved config threestudio saves for every run): its length is compared with this run's.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Tuple

from omegaconf import OmegaConf

from ..utils.errors import ConfigError


def checkpoint_run_config(ckpt_path: Optional[str]) -> Optional[Tuple[str, Any]]:
    """(path, config) of the run that wrote ``ckpt_path``: its trial folder's
    ``configs/parsed.yaml``; None when there is no such file or it cannot be read."""
    if not ckpt_path or not isinstance(ckpt_path, (str, os.PathLike)):
        return None
    trial = os.path.dirname(os.path.dirname(os.path.abspath(os.fspath(ckpt_path))))
    path = os.path.join(trial, "configs", "parsed.yaml")
    if not os.path.isfile(path):
        return None
    try:
        return path, OmegaConf.load(path)
    except Exception:  # noqa: BLE001 (a damaged file only means the check cannot be made)
        return None


def schedule_length_of(cfg: Any, uses_clip_end_step: bool) -> Optional[Tuple[int, str]]:
    """The length a run's schedule stretched over, and the key it came from: ``clip_end_step``
    (for the clip schedule), else ``trainer_max_steps``, else ``trainer.max_steps``."""
    keys = (("system.guidance.clip_end_step",) if uses_clip_end_step else ()) + (
        "system.guidance.trainer_max_steps", "trainer.max_steps")
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


def length_change_warning(ckpt_path: Optional[str], max_steps: int, uses_clip: bool, step: int,
                          threshold: Optional[Callable[[int, int], float]] = None) -> Optional[str]:
    """One line when this run (resumed from ``ckpt_path``, its schedules over ``max_steps`` =
    its ``trainer.max_steps``) stretches them over another length than the run that wrote the
    checkpoint; ``threshold(length, step)`` gives the clip threshold to show both values."""
    found = checkpoint_run_config(ckpt_path)
    if found is None:
        return None
    path, cfg = found
    original = schedule_length_of(cfg, uses_clip)
    if original is None or original[0] == max_steps:
        return None
    length, key = original
    what = "the D-SDS clip schedule" if uses_clip else "sqrt_anneal"
    change = ""
    try:
        if threshold is not None:
            change = (f"; the clip threshold at the resumed step {step} is {threshold(max_steps, step):g} instead "
                      f"of {threshold(length, step):g}")
    except ConfigError:  # the original length ends before clip_start_step: no threshold to show
        pass
    fix = "system.guidance.clip_end_step" if uses_clip else "system.guidance.trainer_max_steps"
    return (f"resumed from {ckpt_path} with trainer.max_steps = {max_steps}, but the run that wrote it stretched "
            f"{what} over {length} steps ({key} in {path}): it now stretches over {max_steps}{change}. To "
            f"continue the original schedule set {fix}={length}")
