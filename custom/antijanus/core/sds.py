"""Score distillation sampling (SDS) pieces: noising, weighting w(t), timestep range, loss.

SDS (DreamFusion): grad_phi L = E_{t,eps}[ w(t) * (eps_hat(x_t; y, t) - eps) * dx/dphi ],
x_t = sqrt(abar_t) * x + sqrt(1 - abar_t) * eps.

HiFA's image-space SDS (``use_img_loss``): with the one-step estimate
x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) decoded to an image I_hat, the image
gradient is w(t) * (I - I_hat) * sqrt(abar_t) / sqrt(1 - abar_t) (threestudio's ``grad_img``).
"""

from __future__ import annotations

import math
from typing import Any, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import ConfigError
from .perp_neg import per_sample

WEIGHTING_STRATEGIES = ("sds", "uniform", "fantasia3d")


def add_noise(x: Tensor, noise: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) * x + sqrt(1 - abar_t) * noise, with abar_t given per sample."""
    abar = per_sample(alphas_cumprod_t.to(x.dtype), x)
    return abar.sqrt() * x + (1.0 - abar).sqrt() * noise


def sds_weight(alphas_cumprod_t: Tensor, strategy: str) -> Tensor:
    """w(t) per sample: 'sds' = 1 - abar_t (DreamFusion's sigma_t^2), 'uniform' = 1,
    'fantasia3d' = sqrt(abar_t) * (1 - abar_t) (as threestudio)."""
    if strategy == "sds":
        return 1.0 - alphas_cumprod_t
    if strategy == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    if strategy == "fantasia3d":
        return alphas_cumprod_t.sqrt() * (1.0 - alphas_cumprod_t)
    raise ConfigError("weighting_strategy", strategy, "unknown weighting", WEIGHTING_STRATEGIES)


def predicted_x0(x_t: Tensor, eps_hat: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """The one-step denoised estimate x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)."""
    abar = per_sample(alphas_cumprod_t.to(x_t.dtype), x_t)
    return (x_t - (1.0 - abar).sqrt() * eps_hat) / abar.sqrt()


def image_space_gradient(image: Tensor, image_denoised: Tensor, w: Tensor,
                         alphas_cumprod_t: Tensor) -> Tensor:
    """HiFA's image-space SDS gradient w(t) (I - I_hat) sqrt(abar_t) / sqrt(1 - abar_t)."""
    abar = per_sample(alphas_cumprod_t.to(image.dtype), image)
    return per_sample(w.to(image.dtype), image) * (image - image_denoised) * abar.sqrt() / (1.0 - abar).sqrt()


def sds_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """A loss whose gradient w.r.t. ``latents`` is ``grad / B`` (reparameterisation trick):
    0.5 * ||latents - sg(latents - grad)||^2 / B, threestudio's `loss_sds`."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]


def scalar_schedule(value: Any, epoch: int, global_step: int) -> float:
    """A scalar or a threestudio-style schedule, evaluated at (epoch, global_step).

    Same specification as threestudio's ``C``: a number; ``[start_value, end_value, end_step]``;
    ``[start_step, start_value, end_value, end_step]`` (linear between the steps, an integer
    end_step counts global steps, a float one epochs); or a longer piecewise list
    ``[start_step, v0, v1, step1, v2, step2, ...]``.
    """
    if isinstance(value, (int, float)):
        return float(value)
    spec = list(value)
    if len(spec) == 3:
        spec = [0] + spec
    if len(spec) >= 6:
        select = 3
        for i in range(3, len(spec) - 2, 2):
            if global_step >= spec[i]:
                select = i + 2
        if select != 3:
            start_value, start_step = spec[select - 3], spec[select - 2]
        else:
            start_step, start_value = spec[:2]
        spec = [start_step, start_value, spec[select - 1], spec[select]]
    if len(spec) != 4:
        raise ValueError(f"schedule {value!r} must have 3, 4 or >= 6 entries")
    start_step, start_value, end_value, end_step = spec
    current = global_step if isinstance(end_step, int) else epoch
    if end_step == start_step:
        progress = 1.0 if current >= end_step else 0.0
    else:
        progress = min(1.0, max(0.0, (current - start_step) / (end_step - start_step)))
    return float(start_value + (end_value - start_value) * progress)


def check_schedule(key: str, value: Any, low: float, high: float) -> None:
    """Config-time check of a scalar/schedule: every value it can take lies in [low, high]."""
    if not isinstance(value, (int, float)):
        try:
            spec = list(value)
        except TypeError:
            raise ConfigError(key, value, "must be a number or a schedule list") from None
        if len(spec) not in (3, 4) and len(spec) < 6:
            raise ConfigError(key, value, "a schedule needs 3, 4 or >= 6 entries "
                              "([start_value, end_value, end_step] or "
                              "[start_step, start_value, end_value, end_step])")
    for v in _schedule_values(value, convert=False):
        if not isinstance(v, (int, float)) or not low <= v <= high or math.isnan(v):
            raise ConfigError(key, value, f"values must lie in [{low}, {high}]")
        if math.isinf(v):
            raise ConfigError(key, value, "values must be finite numbers (inf is not)")
    if not isinstance(value, (int, float)):
        spec = list(value)
        steps = spec[2:3] if len(spec) == 3 else [spec[0]] + spec[3::2]
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) for p in steps):
            raise ConfigError(key, value, "the steps of a schedule must be finite numbers")


def schedule_breakpoints(value: Any) -> Tuple[str, List[float]]:
    """Where a scalar/schedule can change slope, and in which unit ('step', 'epoch' or 'const').

    threestudio's schedules are piecewise linear between these points (an integer end step
    counts global steps, a float one epochs), so their extremes, and the sign of the difference
    of two schedules in the same unit, are decided at the union of their breakpoints.
    """
    if isinstance(value, (int, float)):
        return "const", []
    spec = list(value)
    if len(spec) == 3:
        spec = [0] + spec
    points = [spec[0]] + list(spec[3::2])
    unit = "step" if isinstance(spec[3], int) else "epoch"
    return unit, [float(p) for p in points]


def check_step_range(min_key: str, min_value: Any, max_key: str, max_value: Any) -> None:
    """Config-time check of the timestep range over the whole run.

    t is drawn from [int(T min), int(T max)] with T training timesteps (threestudio's rule), so
    max_step_percent must stay below 1 (t = T indexes past the noise schedule) and min must never
    exceed max (torch.randint fails on an empty range). Both are checked at every breakpoint of
    the schedules; schedules in different units (steps / epochs) must not overlap at all.
    """
    check_schedule(min_key, min_value, 0.0, 1.0)
    check_schedule(max_key, max_value, 0.0, 1.0)
    for v in _schedule_values(max_value):
        if v >= 1.0:
            raise ConfigError(max_key, max_value, "must stay below 1.0: t = int(T * 1.0) = T indexes "
                              "past the noise schedule (use e.g. 0.98, threestudio's default)")
    (min_unit, min_points), (max_unit, max_points) = (schedule_breakpoints(min_value),
                                                      schedule_breakpoints(max_value))
    if "const" in (min_unit, max_unit) or min_unit == max_unit:
        epoch = min_unit == "epoch" or max_unit == "epoch"
        for point in sorted({0.0, *min_points, *max_points}):
            step, ep = (0, point) if epoch else (int(point), 0)
            low = scalar_schedule(min_value, ep, step)
            high = scalar_schedule(max_value, ep, step)
            if low > high:
                raise ConfigError(min_key, min_value, f"exceeds {max_key} ({max_value!r}) at "
                                  f"{'epoch' if epoch else 'step'} {point:g} ({low:g} > {high:g}): "
                                  "the timestep range would be empty")
    elif max(_schedule_values(min_value)) > min(_schedule_values(max_value)):
        raise ConfigError(min_key, min_value, f"and {max_key} ({max_value!r}) are scheduled in "
                          "different units (steps / epochs) and their ranges overlap, so min may "
                          "exceed max; use the same unit for both")


def schedule_values(value: Any) -> List[float]:
    """Every value a scalar/schedule takes at its breakpoints: its extremes are among them."""
    return _schedule_values(value)


def _schedule_values(value: Any, convert: bool = True) -> List[Any]:
    """Every value a scalar/schedule takes at its breakpoints (floats unless ``convert=False``)."""
    if isinstance(value, (int, float)):
        values: List[Any] = [value]
    else:
        spec = list(value)
        if len(spec) == 3:
            values = spec[:2]
        elif len(spec) == 4:
            values = spec[1:3]
        else:
            values = [spec[1], spec[2]] + spec[4::2]
    return [float(v) for v in values] if convert else values


def timestep_range(
    num_train_timesteps: int, min_step_percent: float, max_step_percent: float
) -> Tuple[int, int]:
    """Integer timestep bounds [min_step, max_step] (inclusive), as threestudio."""
    return int(num_train_timesteps * min_step_percent), int(num_train_timesteps * max_step_percent)


def sqrt_annealed_percent(
    global_step: int, trainer_max_steps: int, min_percent: float, max_percent: float
) -> float:
    """HiFA's sqrt annealing: t/T goes from max to min as sqrt(step / max_steps)."""
    progress = min(1.0, max(0.0, global_step / trainer_max_steps)) ** 0.5
    return (max_percent - min_percent) * (1.0 - progress) + min_percent
