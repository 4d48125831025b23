"""D-SDS score debiasing: dynamic score clipping (Hong, Ahn, Kim, NeurIPS 2023, arXiv 2303.15413).

Eq. (12)-(13) and docs/algorithms.md section 2a:

    Clip(x, c)    = max(min(x, c), -c)                       (element-wise)
    psi(step)     = (1 - tau) * psi_start + tau * psi_end,   tau = step / max_step
    score_clipped = Clip(score, psi(step))

What is clipped: the recipe of the path in use (``clip_target: null``).

- SDS: the final gradient w(t) * (eps_hat - eps) -- the D-SDS authors' own threestudio recipe,
  ``grad_clip: [0, 2.0, 8.0, 10000]`` on Stable Diffusion and ``[0, 0.5, 2.0, 10000]`` on
  DeepFloyd IF (``clip_target: gradient``).
- SJC: SJC's score eps_hat - eps (no w(t); ``eps_hat`` without variance reduction) -- the paper's
  own code, built on SJC, clamps it at 8 * (0.25 + 0.75 * step / n), i.e. 2 -> 8. SJC's update
  is its score, so this is also ``clip_target: gradient``.

``clip_target: residual`` (an option) clips eps_hat - eps *before* w(t) on the SDS path: the
SJC-style clip carried over to SDS (the same threshold then clips more, since w(t) <= 1).

The threshold is a pure function of the global step, so a resumed run clips exactly as an
uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

from torch import Tensor

from ..utils.errors import ConfigError, require_choice, require_finite, require_non_negative

CLIP_SCHEDULES = ("linear", "constant", "cosine")
CLIP_TARGETS = ("gradient", "residual")


def clip_target_of_path(clip_target: Optional[str]) -> str:
    """``clip_target: null`` is the recipe of the path: the final update, i.e. w(t)(eps_hat - eps)
    for SDS (authors' threestudio recipe) and the score for SJC (the paper's code)."""
    return "gradient" if clip_target is None else clip_target


def describe_clip(target: str, use_sjc: bool, method: str = "sds") -> str:
    if method == "vsd":
        return ("VSD's gradient w(t)(eps_pre - eps_lora)" if target == "gradient"
                else "VSD's residual eps_pre - eps_lora before w(t) (option `residual`)")
    if use_sjc:
        return "SJC's score eps_hat - eps (no w(t); the D-SDS paper's code)"
    if target == "gradient":
        return "the final gradient w(t)(eps_hat - eps) (the D-SDS authors' threestudio recipe)"
    return "the residual eps_hat - eps before w(t) (option `residual`)"


@dataclass(frozen=True)
class ClipSchedule:
    """psi(step) rising from ``start`` to ``end`` between ``start_step`` and ``end_step``.

    linear: (1 - tau) start + tau end; cosine: start + (end - start) (1 - cos(pi tau)) / 2;
    constant: start at every step (static clipping, the paper's ablation).
    tau = clamp((step - start_step) / (end_step - start_step), 0, 1).
    """

    kind: str = "linear"
    start: float = 2.0
    end: float = 8.0
    start_step: int = 0
    end_step: int = 10000

    def validate(self, prefix: str = "clip_") -> "ClipSchedule":
        require_choice(prefix + "schedule", self.kind, CLIP_SCHEDULES)
        for name in ("start", "end", "start_step", "end_step"):
            require_finite(prefix + name, getattr(self, name))
        require_non_negative(prefix + "start", self.start)
        require_non_negative(prefix + "end", self.end)
        if self.kind != "constant" and self.start > self.end:
            raise ConfigError(prefix + "start", self.start,
                              f"must be <= {prefix}end ({self.end}): the D-SDS threshold rises "
                              "over training (use clip_schedule: constant for a fixed one)")
        if self.start_step < 0:
            raise ConfigError(prefix + "start_step", self.start_step, "must be >= 0")
        if self.kind != "constant" and self.end_step <= self.start_step:
            raise ConfigError(prefix + "end_step", self.end_step,
                              f"must be > {prefix}start_step ({self.start_step})")
        return self

    def progress(self, step: int) -> float:
        if self.end_step <= self.start_step:
            return 1.0 if step >= self.end_step else 0.0
        return min(1.0, max(0.0, (step - self.start_step) / (self.end_step - self.start_step)))

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return float(self.start)
        tau = self.progress(step)
        if self.kind == "cosine":
            tau = 0.5 * (1.0 - math.cos(math.pi * tau))
        return float((1.0 - tau) * self.start + tau * self.end)


def clip_score(x: Tensor, threshold: float) -> Tuple[Tensor, Tensor]:
    """Clip(x, c) = max(min(x, c), -c) element-wise, and the fraction of elements clipped."""
    clipped_fraction = (x.abs() > threshold).float().mean()
    return x.clamp(-threshold, threshold), clipped_fraction

