"""Variational score distillation (ProlificDreamer, Wang et al. 2023, arXiv 2305.16213) and its
entropic variant ESD (Wang et al., CVPR 2024, arXiv 2401.00909): the maths, as pure functions.

VSD keeps a second noise predictor eps_phi, a LoRA of a diffusion UNet with a camera embedding,
that learns the distribution of the current renders. The render is pushed along the difference
between the pretrained score and that learned one (Eq. (9) as the issue cites it), and eps_phi is
trained on the renders with the ordinary diffusion loss (Eq. (10), Algorithm 1's inner step):

    x_t       = sqrt(abar_t) x + sqrt(1 - abar_t) eps                 (t ~ U[min_step, max_step])
    eps_pre   = eps_unc + s * (eps(x_t, t, y) - eps_unc)              (CFG, or Perp-Neg's eps_PN)
    eps_lora  = eps_phi(x_t, t, y, 0) + s_l * (eps_phi(x_t, t, y, c) - eps_phi(x_t, t, y, 0))
    grad      = w(t) * (eps_pre - eps_lora),   w(t) = 1 - abar_t
    loss_vsd  = 0.5 * ||x - sg(x - grad)||^2 / B                      (d loss / d x = grad / B)

    loss_lora = mean ||eps_phi(sqrt(abar_t) sg(x) + sqrt(1 - abar_t) eps, t, y, c') - target||^2
                t ~ U{0, ..., T-1},  target = eps (epsilon models) or
                v = sqrt(abar_t) eps - sqrt(1 - abar_t) x (v-prediction models),
                c' = 0 for the whole batch with probability 0.1 (lora_cfg_training), else c.

Conventions are threestudio's ``stable-diffusion-vsd-guidance`` (HEAD 28d9d80,
``threestudio/models/guidance/stable_diffusion_vsd_guidance.py``): both CFGs in the
eps_unc + s (eps_cond - eps_unc) form (lines 512-538; it is this plugin's one form, so a VSD
guidance_scale keeps its value, 7.5); the LoRA branch's "unconditional" row is the same
view-independent prompt with a zero camera (lines 490-505), not an empty prompt; w(t) = 1 - abar_t
of the pretrained schedule (line 540); nan_to_num, then the clamp by grad_clip (lines 666-669);
the LoRA loss (lines 561-604). The camera c is the camera-to-world matrix (``extrinsics``) or the
model-view-projection matrix (``mvp``), flattened to 16 numbers (lines 653-660, 497-501).

ESD: see ``esd_lora_scale``. Sampling (``system.visualize_samples``): ``sample_latents``, threestudio's
``_sample`` loop (lines 233-301). Nothing here loads a model; the UNet enters as a callable
``unet(x_t [N, C, h, w], t [N], text [N, tokens, features], camera [N, 16]) -> raw output``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import require_choice
from .perp_neg import per_sample
from .sds import add_noise, image_space_gradient, sds_loss

#: threestudio's ``camera_condition_type`` values: which camera matrix conditions the LoRA.
CAMERA_CONDITION_TYPES = ("extrinsics", "mvp")
#: What a diffusers UNet predicts (its scheduler's ``prediction_type``).
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: threestudio's probability of training the LoRA without its camera (``lora_cfg_training``).
CAMERA_DROP_PROBABILITY = 0.1

#: The LoRA UNet: (x_t [N, C, h, w], t [N], text [N, tokens, features], camera [N, 16]) -> output.
UNetCall = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


# -- the camera condition -------------------------------------------------------------------------
def camera_condition(camera_condition_type: str, c2w: Tensor, mvp_mtx: Tensor) -> Tensor:
    """The LoRA's camera, [B, 16]: the camera-to-world matrix ('extrinsics', threestudio's
    default) or the model-view-projection matrix ('mvp'), each [B, 4, 4], flattened row-major."""
    require_choice("camera_condition_type", camera_condition_type, CAMERA_CONDITION_TYPES)
    camera = c2w if camera_condition_type == "extrinsics" else mvp_mtx
    return camera.reshape(camera.shape[0], -1)


def camera_cfg_rows(camera: Tensor) -> Tensor:
    """[camera (B); zeros (B)] -> [2B, 16]: the LoRA's conditional and camera-free rows."""
    return torch.cat([camera, torch.zeros_like(camera)])


def drop_camera(camera: Tensor, probability: float, generator: Optional[torch.Generator] = None
                ) -> Tensor:
    """threestudio's camera dropout for CFG training: with ``probability``, one draw per call, the
    *whole* camera tensor (every sample) becomes zeros, the same zeros the guidance step feeds as
    its camera-free row. The text is never dropped. threestudio draws with Python's ``random``;
    this draws from torch (``generator``, on the camera's device, or torch's global RNG) and keeps
    the decision on the device (no host sync)."""
    draw = torch.rand((), generator=generator, device=camera.device)
    return torch.where(draw < probability, torch.zeros_like(camera), camera)


# -- the two guided predictions -------------------------------------------------------------------
def cfg_noise(eps_cond: Tensor, eps_uncond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance eps_unc + s * (eps_cond - eps_unc) (s = 1: the conditional one)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def epsilon_from_output(output: Tensor, x_t: Tensor, alphas_cumprod_t: Tensor, prediction_type: str
                        ) -> Tensor:
    """A UNet output as epsilon: itself, or from v: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""
    require_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return output
    abar = per_sample(alphas_cumprod_t.to(output), output)
    return abar.sqrt() * output + (1.0 - abar).sqrt() * x_t.to(output.dtype)


@torch.no_grad()
def lora_guided_noise(unet: UNetCall, x_t: Tensor, t: Tensor, text_cond: Tensor, camera: Tensor,
                      guidance_scale_lora: float, alphas_cumprod_t: Tensor, prediction_type: str,
                      text_uncond: Optional[Tensor] = None) -> Tensor:
    """eps_lora [B, C, h, w]: the LoRA UNet on 2B rows in one call, [camera; zero camera], both
    with the view-independent prompt ``text_cond`` [B, tokens, features]; v-outputs converted with
    the LoRA model's abar_t [B]; combined by CFG with ``guidance_scale_lora`` (1: plain VSD, below
    1: ESD, see ``esd_lora_scale``). No gradient flows into the LoRA here (threestudio's no_grad).
    ``text_uncond``: the camera-free row's prompt instead (threestudio's ``sample_lora`` pairs the
    zero camera with the unconditional prompt; its VSD step with the same prompt)."""
    rows = torch.cat([x_t, x_t])
    text_free = text_cond if text_uncond is None else text_uncond
    output = unet(rows, torch.cat([t, t]), torch.cat([text_cond, text_free]), camera_cfg_rows(camera))
    eps = epsilon_from_output(output, rows, torch.cat([alphas_cumprod_t, alphas_cumprod_t]),
                              prediction_type)
    eps_camera, eps_no_camera = eps.chunk(2)
    return cfg_noise(eps_camera, eps_no_camera, guidance_scale_lora)


def esd_lora_scale(entropy_weight: float) -> float:
    """The ``guidance_scale_lora`` that makes VSD into ESD with entropy weight lambda: 1 - lambda.

    ESD adds the entropy of the *camera-marginal* render distribution q(x | y) to VSD's objective.
    VSD's negative term is the camera-conditioned score of the renders, eps_phi(x_t, t, y, c): each
    view is compared only with renders from its own camera, so nothing stops every view from
    becoming the same front face (the Janus mode). ESD replaces it by the mixture
    lambda * eps_phi(x_t, t, y) + (1 - lambda) * eps_phi(x_t, t, y, c); subtracting the
    camera-free score pushes a view away from what the object looks like from *all* cameras, which
    raises the diversity across views. With the zero camera as the camera-free condition, that
    mixture is exactly the LoRA branch's CFG with scale s_l = 1 - lambda:
    eps(0) + s_l (eps(c) - eps(0)) = (1 - s_l) eps(0) + s_l eps(c). So s_l = 1 is VSD (lambda = 0),
    s_l = 0.5 is the authors' suggested setting (their README for threestudio's prolificdreamer:
    ``system.guidance.guidance_scale_lora=0.5``), s_l = 0 uses the camera-free score alone
    (lambda = 1), and s_l > 1 extrapolates away from it (not ESD). The camera-free row is only
    meaningful if the LoRA learned it: keep ``lora_cfg_training`` on (camera dropout 0.1).
    Paper: arXiv 2401.00909 (verified id); its equation numbers are not checked here."""
    return 1.0 - entropy_weight


# -- the gradient and the loss --------------------------------------------------------------------
def vsd_weight(alphas_cumprod_t: Tensor) -> Tensor:
    """threestudio's VSD weighting w(t) = 1 - abar_t per sample (SDS's 'sds' weighting)."""
    return 1.0 - alphas_cumprod_t


def vsd_gradient(eps_pretrain: Tensor, eps_lora: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """grad = w(t) * (eps_pre - eps_lora) [B, C, h, w]; eps_pre is the guided pretrained noise
    (CFG, or Perp-Neg's eps_PN computed by the guidance path), abar_t [B] of the pretrained model."""
    w = per_sample(vsd_weight(alphas_cumprod_t).to(eps_pretrain), eps_pretrain)
    return w * (eps_pretrain - eps_lora.to(eps_pretrain))


def clamp_gradient(grad: Tensor, grad_clip: Optional[float]) -> Tensor:
    """threestudio's ``grad_clip``: NaN/inf replaced (nan_to_num), then each element clamped to
    [-grad_clip, grad_clip] when a value is set (its schedule evaluated at the current step)."""
    grad = torch.nan_to_num(grad)
    return grad if grad_clip is None else grad.clamp(-grad_clip, grad_clip)


def vsd_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """loss_vsd = 0.5 * ||latents - sg(latents - grad)||^2 / B (d loss / d latents = grad / B)."""
    return sds_loss(latents, grad)


def vsd_image_gradient(image_lora: Tensor, image_pretrain: Tensor, alphas_cumprod_t: Tensor
                       ) -> Tensor:
    """HiFA's image-space term of threestudio's VSD (``use_img_loss``, lines 547-556):
    w(t) (I_lora - I_pre) sqrt(abar_t) / sqrt(1 - abar_t), the images decoded from the one-step
    x0 estimates of eps_lora and eps_pre. Note the order: the LoRA image first, and no render."""
    w = vsd_weight(alphas_cumprod_t)
    return image_space_gradient(image_lora, image_pretrain, w, alphas_cumprod_t)


# -- training the LoRA ----------------------------------------------------------------------------
def velocity(x0: Tensor, noise: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """The v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (diffusers'
    ``get_velocity``), abar_t per sample."""
    abar = per_sample(alphas_cumprod_t.to(x0), x0)
    return abar.sqrt() * noise - (1.0 - abar).sqrt() * x0


@dataclass
class LoRABatch:
    """The LoRA's denoising batch: the renders repeated ``lora_n_timestamp_samples`` times."""

    x_t: Tensor  # [nB, C, h, w] noisy renders
    t: Tensor  # [nB] long, uniform over the whole schedule
    text: Tensor  # [nB, tokens, features] view-independent prompt
    camera: Tensor  # [nB, 16], all zeros when dropped
    target: Tensor  # [nB, C, h, w] eps or v


def lora_training_batch(latents: Tensor, text_cond: Tensor, camera: Tensor, alphas_cumprod: Tensor,
                        prediction_type: str, n_timestamp_samples: int = 1, cfg_training: bool = True,
                        generator: Optional[torch.Generator] = None) -> LoRABatch:
    """threestudio's ``train_lora`` inputs. latents [B, C, h, w] (detached here), text_cond
    [B, tokens, features], camera [B, 16], alphas_cumprod [T] of the LoRA model. The batch is
    tiled n times (``repeat``: [x_0..x_B-1, x_0..]); per row t ~ U{0, .., T-1} and fresh noise;
    the camera is dropped with probability 0.1 when ``cfg_training``. Random draws in threestudio's
    order (t, noise, drop) from ``generator`` (on the latents' device) or torch's global RNG."""
    require_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    n = n_timestamp_samples
    x0 = latents.detach().repeat(n, 1, 1, 1)
    num_train_timesteps = alphas_cumprod.shape[0]
    t = torch.randint(0, num_train_timesteps, (x0.shape[0],), generator=generator,
                      device=x0.device, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    abar = alphas_cumprod.to(x0.device)[t]
    target = noise if prediction_type == "epsilon" else velocity(x0, noise, abar)
    if cfg_training:
        camera = drop_camera(camera, CAMERA_DROP_PROBABILITY, generator)
    return LoRABatch(x_t=add_noise(x0, noise, abar), t=t, text=text_cond.repeat(n, 1, 1),
                     camera=camera.reshape(camera.shape[0], -1).repeat(n, 1), target=target)


def lora_loss(unet: UNetCall, batch: LoRABatch) -> Tensor:
    """loss_lora: the mean squared error of the LoRA UNet's raw output against the target, in
    fp32 (threestudio's ``F.mse_loss(noise_pred.float(), target.float(), reduction="mean")``).
    Gradients reach the LoRA and the camera embedding only (the renders are detached)."""
    prediction = unet(batch.x_t, batch.t, batch.text, batch.camera)
    return F.mse_loss(prediction.float(), batch.target.float(), reduction="mean")


# -- sampling (threestudio's ``sample`` / ``sample_lora``) ------------------------------------------
def initial_latents(shape, seed: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The sampler's starting noise as threestudio's ``_sample`` draws it: ``torch.randn`` from a
    generator on the device seeded with ``seed``, in the model's dtype (diffusers'
    ``prepare_latents``; the DDPM-family samplers start at sigma 1), returned fp32."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype).float()


@torch.no_grad()
def sample_latents(sampler, predict: Callable[[Tensor, Tensor], Tensor], latents: Tensor,
                   steps: int) -> Tensor:
    """Denoise ``latents`` [B, C, h, w] from pure noise with ``sampler`` (a diffusers scheduler
    configured for epsilon) in ``steps`` steps; ``predict(x_t, t [B])`` is the guided epsilon."""
    sampler.set_timesteps(steps, device=latents.device)
    batch = latents.shape[0]
    for timestep in sampler.timesteps:
        t = timestep.reshape(1).to(latents.device, torch.long).expand(batch)
        latents = sampler.step(predict(latents, t), timestep, latents).prev_sample
    return latents
