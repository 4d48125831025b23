"""Noise schedules that do not come from a model folder, and VSD's sample scheduler.

Stable Diffusion's scaled-linear schedule (beta 0.00085 -> 0.012), which threestudio forces for
Score Jacobian Chaining whatever the folder's scheduler says (``core/sjc.py``):

    beta_t  = (sqrt(beta_start) + t / (T - 1) * (sqrt(beta_end) - sqrt(beta_start)))^2
    abar_t  = prod_{s <= t} (1 - beta_s)
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The noise schedule threestudio forces for SJC (Stable Diffusion's own), as diffusers'
#: scheduler keys.
SJC_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def sjc_alphas_cumprod(num_train_timesteps: int) -> Tensor:
    """abar_t [T] of the scaled-linear schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2."""
    betas = torch.linspace(SJC_SCHEDULE["beta_start"] ** 0.5, SJC_SCHEDULE["beta_end"] ** 0.5,
                           num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


#: The sampler steps of threestudio's VSD ``sample`` / ``sample_lora`` (``num_inference_steps=25``).
VSD_SAMPLE_STEPS = 25


def dpm_solver_sampler(scheduler_config):
    """threestudio's VSD sampler: ``DPMSolverMultistepScheduler.from_config`` of the model
    folder's scheduler config (its defaults and ``timestep_spacing`` as threestudio gets them)
    with ``steps_offset`` 1, as diffusers' ``StableDiffusionPipeline`` corrects an older config
    before threestudio reads it; fed epsilon predictions (v outputs are converted first)."""
    from diffusers import DPMSolverMultistepScheduler  # deferred: slow import

    return DPMSolverMultistepScheduler.from_config(scheduler_config, prediction_type="epsilon", steps_offset=1)
