"""Denoising previews for threestudio's ``guidance_eval`` (``system.freq.guidance_eval``).

As threestudio's guidances: the sampler is set to 50 steps, each item's training timestep t is
replaced by the first sampler timestep <= t, one sampler step is taken from the noisy input with
the step's own noise prediction (``imgs_1step``, and its x0 estimate ``imgs_1orig``), then the
remaining steps run to x0 (``imgs_final``). Images are [bs, H, W, 3] in [0, 1]; ``noise_levels``
are t / T. Differences: the last sampler timestep is used when t lies below all of them
(threestudio then picks the first, the noisiest), ``eta`` is passed only to samplers that take
it (threestudio's SJC preview passes it to DDPM and fails), and every denoising step is the
caller's own guided prediction.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict

import torch
from torch import Tensor

PREVIEW_STEPS = 50


def preview_timestep_indices(timesteps: Tensor, t: Tensor) -> Tensor:
    """Per item, the index of the first (descending) sampler timestep <= t."""
    larger = timesteps.unsqueeze(0) > t.unsqueeze(-1)  # [bs, n]
    first_not_larger = larger.int().argmin(dim=1)
    return torch.where(larger.all(dim=1), torch.full_like(first_not_larger, len(timesteps) - 1),
                       first_not_larger)


def step_kwargs(sampler: Any) -> Dict[str, Any]:
    """DDIM with eta = 1 (ancestral), as threestudio; DDPM takes no eta."""
    return {"eta": 1.0} if "eta" in inspect.signature(sampler.step).parameters else {}


@torch.no_grad()
def denoising_previews(
    sampler: Any,
    decode: Callable[[Tensor], Tensor],
    guided: Callable[[int, Tensor, Tensor], Tensor],
    x_t: Tensor,
    model_output: Tensor,
    t: Tensor,
    num_train_timesteps: int,
    steps: int = PREVIEW_STEPS,
) -> Dict[str, Any]:
    """x_t [bs, C, h, w] noisy inputs at timesteps t [bs] with the model output of that step;
    ``guided(b, latents, timestep)`` gives item b's model output for the later steps."""
    sampler.set_timesteps(steps)
    timesteps = sampler.timesteps.cpu()
    indices = preview_timestep_indices(timesteps, t.cpu())
    chosen = timesteps[indices]
    kwargs = step_kwargs(sampler)
    one_step, one_step_x0, final = [], [], []
    for b, index in enumerate(indices.tolist()):
        result = sampler.step(model_output[b:b + 1], int(chosen[b]), x_t[b:b + 1], **kwargs)
        one_step.append(result.prev_sample)
        one_step_x0.append(result.pred_original_sample)
        latents = result.prev_sample
        for timestep in timesteps[index + 1:]:
            latents = sampler.step(guided(b, latents, timestep), int(timestep), latents, **kwargs).prev_sample
        final.append(latents)

    def images(x: Tensor) -> Tensor:
        return decode(x).permute(0, 2, 3, 1)

    return {
        "bs": x_t.shape[0],
        "noise_levels": list((chosen.float() / num_train_timesteps).numpy()),
        "imgs_noisy": images(x_t),
        "imgs_1step": images(torch.cat(one_step)),
        "imgs_1orig": images(torch.cat(one_step_x0)),
        "imgs_final": images(torch.cat(final)),
    }
