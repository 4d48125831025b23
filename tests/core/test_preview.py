"""guidance_eval previews (core/preview.py) on a recording stand-in with a diffusers scheduler's
interface: which sampler timestep each item starts from, one step with the step's own model
output, the remaining steps with the caller's guided prediction, DDIM's eta only where taken."""

import types

import pytest
import torch

from antijanus.core.preview import (PREVIEW_STEPS, denoising_previews, preview_timestep_indices,
                                    step_kwargs)


class StandInSampler:
    """Descending timesteps 980, 960, ..., 0 for 50 steps (DDIM's leading spacing over T = 1000);
    a step is prev = sample - output, x0 = sample + output; every call is recorded."""

    def set_timesteps(self, steps):
        self.steps = steps
        self.timesteps = torch.arange(steps - 1, -1, -1) * (1000 // steps)
        self.calls = []

    def step(self, model_output, timestep, sample):
        self.calls.append(timestep)
        return types.SimpleNamespace(prev_sample=sample - model_output,
                                     pred_original_sample=sample + model_output)


class StandInDDIM(StandInSampler):
    def step(self, model_output, timestep, sample, eta=0.0):
        self.etas = getattr(self, "etas", []) + [eta]
        return super().step(model_output, timestep, sample)


def test_each_item_starts_at_the_first_sampler_timestep_not_above_its_t():
    timesteps = torch.arange(49, -1, -1) * 20 + 1  # 981, 961, ..., 1
    indices = preview_timestep_indices(timesteps, torch.tensor([999, 981, 980, 500, 0]))
    assert timesteps[indices].tolist() == [981, 981, 961, 481, 1]  # t below all: the last one
    assert indices.tolist() == [0, 0, 1, 25, 49]


def test_eta_goes_only_to_samplers_that_take_it():
    assert step_kwargs(StandInDDIM()) == {"eta": 1.0}  # DDIM's ancestral step, as threestudio
    assert step_kwargs(StandInSampler()) == {}  # DDPM has no eta


def test_previews_take_one_step_then_denoise_with_the_guided_prediction():
    sampler, guided_calls = StandInSampler(), []

    def guided(b, latents, timestep):
        guided_calls.append((b, int(timestep)))
        return torch.full_like(latents, 0.01 * (b + 1))

    x_t, model_output = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    out = denoising_previews(sampler, lambda x: x * 2.0, guided, x_t, model_output,
                             torch.tensor([500, 30]), num_train_timesteps=1000)

    assert sampler.steps == PREVIEW_STEPS and out["bs"] == 2
    assert out["noise_levels"] == pytest.approx([0.5, 0.02])  # 500 and 20 (the first <= 30)
    nhwc = lambda x: (x * 2.0).permute(0, 2, 3, 1)  # noqa: E731  (decoded, channels last)
    one_step = x_t - model_output
    assert torch.allclose(out["imgs_noisy"], nhwc(x_t))
    assert torch.allclose(out["imgs_1step"], nhwc(one_step))
    assert torch.allclose(out["imgs_1orig"], nhwc(x_t + model_output))
    # item 0: 25 more steps (480, 460, ..., 0) of 0.01; item 1: one more step (0) of 0.02
    assert [ts for b, ts in guided_calls if b == 0] == list(range(480, -1, -20))
    assert [ts for b, ts in guided_calls if b == 1] == [0]
    final = torch.stack([one_step[0] - 25 * 0.01, one_step[1] - 0.02])
    assert torch.allclose(out["imgs_final"], nhwc(final), atol=1e-5)
    assert sampler.calls[0] == 500 and sampler.calls[26] == 20  # each item's first step at its timestep


def test_a_ddim_sampler_gets_eta_one_at_every_step():
    sampler = StandInDDIM()
    denoising_previews(sampler, lambda x: x, lambda b, x, t: torch.zeros_like(x), torch.rand(1, 3, 2, 2),
                       torch.rand(1, 3, 2, 2), torch.tensor([100]), num_train_timesteps=1000, steps=10)
    assert sampler.etas == [1.0] * 2  # timesteps 900, ..., 0: from 100, then 0
