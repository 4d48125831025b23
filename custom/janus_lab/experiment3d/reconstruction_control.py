"""The reconstruction control (``lab.reconstruction``) at a run setting: the fitted orbits kept
on disk under a content key, judged by the judge in place, and written out (verdict and strip)."""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Callable, Dict

import torch

from antijanus.utils.cache import atomic_write, cache_key, load_torch, write_json
from antijanus.utils.imaging import to_pil

from .. import reconstruction
from ..judge import Judge
from ..model_files import folder_fingerprint
from ..volume_orbits import frames_from_uint8
from ..world import KINDS
from .keys import judge_identity
from .lab_models import LabModels, load_backbone
from .settings import FastSettings, Representation

KEPT_ORBITS = "orbits.pt"


def control_key(settings: FastSettings, control, representation: Representation, prior: str) -> str:
    """Everything the fit reads: the run settings it uses, the representation built from the
    config, the control's settings and the prior's weights."""
    return cache_key(volume=dataclasses.asdict(settings.volume), steps=settings.steps, lr=settings.lr,
                     cameras=settings.cameras, orbit_views=settings.orbit_views,
                     orbit_elevation=settings.orbit_elevation, control=dataclasses.asdict(control),
                     representation=dataclasses.asdict(representation), prior=folder_fingerprint(prior))


def kept_orbits(path: str, key: str, fit: Callable[[], Dict]) -> Dict:
    """The orbits kept at ``path`` under ``key``; fitted (``fit()``) and kept when missing,
    unreadable or kept under another key."""
    kept = load_torch(path, lambda value: isinstance(value, dict) and {"key", "orbits"} <= set(value),
                      "a kept reconstruction")
    if kept is None or kept["key"] != key:
        kept = {"key": key, "orbits": fit()}
        buffer = io.BytesIO()
        torch.save(kept, buffer)
        atomic_write(path, lambda f: f.write(buffer.getvalue()), binary=True)
    return kept["orbits"]


def write_strips(path: str, orbits: Dict) -> None:
    """One PNG: a row per (kind, form), its orbit's frames side by side."""
    strips = [torch.cat(list(frames_from_uint8(orbits[(kind, form)]["frames"])), dim=2)
              for kind in KINDS for form in reconstruction.FORMS if (kind, form) in orbits]
    image = io.BytesIO()
    to_pil(torch.cat(strips, dim=1)).save(image, format="PNG")
    atomic_write(path, lambda f: f.write(image.getvalue()), binary=True)


def reconstruction_for(out: str, settings: FastSettings, models: LabModels, log=print) -> Dict[str, Any]:
    """The reconstruction control at ``settings``' cameras, volume, steps and lr, judged by
    ``models.judge``. The fitted orbits are kept in ``out`` (``orbits.pt``, ``control_key``) and
    judged from the kept frames, on the first call as on later ones; another judge re-judges
    without fitting again; an unreadable kept file is fitted again. Writes ``reconstruction.json``
    and ``reconstruction.png`` there."""
    control = reconstruction.ReconstructionSettings()
    representation = Representation.from_config(settings.volume, settings.steps, preset=settings.cameras)

    def fit() -> Dict:
        torch.set_num_threads(settings.threads)
        return reconstruction.fit_orbits(load_backbone(models.prior), settings, representation, control=control,
                                         log=log)

    orbits = kept_orbits(os.path.join(out, KEPT_ORBITS), control_key(settings, control, representation, models.prior),
                         fit)
    result = {**reconstruction.judge_orbits(orbits, Judge.load(models.judge), settings),
              "judge": judge_identity(models.judge)}
    write_strips(os.path.join(out, "reconstruction.png"), orbits)
    write_json(os.path.join(out, "reconstruction.json"), result)
    return result
