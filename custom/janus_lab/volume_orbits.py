"""A trained volume's test orbit as the 3D experiment keeps and judges it: frames stored as uint8
(``orbit.pt``, with an ``orbit.png`` strip) and judged from what is stored, with the Janus
metric (``janus.orbit_metrics``, the orbit's outcome included: ``outcome`` and the one-hot
``outcome_*`` columns, which go into a run's result.json with the other metrics) at the run
settings' azimuths and elevation and the kind the prompt names. A 3D run's orbit
(``experiment3d``) and a reconstruction's (``reconstruction``) are judged alike."""

from __future__ import annotations

import os
from typing import Dict

import torch

from antijanus.utils.errors import ConfigError
from antijanus.utils.imaging import to_pil

from .janus import orbit_metrics
from .orbits import orbit_azimuths
from .world import KINDS

ORBIT_FRAMES = "orbit.pt"
ORBIT_STRIP = "orbit.png"


def kind_of(prompt: str) -> str:
    """The one kind a lab prompt names (the judge's expected kind)."""
    words = [w for w in prompt.replace(",", " ").split() if w in KINDS]
    if len(words) != 1:
        raise ConfigError("prompts", prompt, f"a lab prompt names one of the kinds {list(KINDS)}")
    return words[0]


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Orbit frames in [0, 1] as kept on disk (and judged again from)."""
    return (frames * 255).round().to(torch.uint8)


def frames_from_uint8(frames: torch.Tensor) -> torch.Tensor:
    return frames.float() / 255.0


def save_orbit(run_dir: str, frames: torch.Tensor) -> None:
    """``orbit.pt`` (uint8 frames) and ``orbit.png`` (the frames side by side) in ``run_dir``."""
    torch.save(frames_to_uint8(frames), os.path.join(run_dir, ORBIT_FRAMES))
    strip = torch.cat(list(frames), dim=2)  # [3, H, N * W]
    to_pil(strip).save(os.path.join(run_dir, ORBIT_STRIP))


def load_orbit_frames(run_dir: str) -> torch.Tensor:
    return frames_from_uint8(torch.load(os.path.join(run_dir, ORBIT_FRAMES)))


def judge_run_orbit(frames: torch.Tensor, judge, prompt: str, settings) -> Dict[str, float]:
    """The Janus metric and outcome of a run's orbit (``settings``: a ``FastSettings``, its
    ``orbit_views`` azimuths and ``orbit_elevation``; the prompt's kind)."""
    return orbit_metrics(frames, orbit_azimuths(settings.orbit_views), settings.orbit_elevation, judge,
                         kind=kind_of(prompt))
