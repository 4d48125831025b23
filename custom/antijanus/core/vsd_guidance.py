"""VSD (ProlificDreamer, arXiv 2305.16213) on the one guidance path: the pretrained branch is the
path's guided noise (CFG, or Perp-Neg with its per-sample negatives), the negative term is the
LoRA branch eps_phi (``backbones/lora_unet.py``), the gradient goes through the path's D-SDS
clipping and grad_clip, and each step trains the LoRA once (``loss_lora``). The maths is
``vsd.py``; threestudio's ``stable-diffusion-vsd-guidance`` is what it is drop-in for:

    x_t       = sqrt(abar_t) x + sqrt(1 - abar_t) eps,   t ~ U[min_step, max_step]
    eps_pre   = eps_unc + s * (e_pos - sum_i w_i e_i_perp)            (Perp-Neg off: CFG)
    eps_lora  = eps_phi(x_t; y, 0) + s_l (eps_phi(x_t; y, c) - eps_phi(x_t; y, 0))
    grad      = Clip(w(t) (eps_pre - eps_lora), psi(step)),  w(t) = 1 - abar_t
    loss_vsd  = 0.5 ||x - sg(x - grad)||^2 / B;   loss_lora: vsd.lora_loss

y is the view-independent prompt and c the camera (``camera_condition_type``), as threestudio.
``sample`` / ``sample_lora`` draw images from the two branches (``system.visualize_samples``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones.base import DiffusionBackbone
from ..backbones.lora_unet import LoRAUNet
from ..backbones.schedules import VSD_SAMPLE_STEPS, dpm_solver_sampler
from ..utils.errors import ConfigError
from .guidance import ScoreDistillationGuidance
from .guidance_config import PerpNegDecision, VSDConfig
from .sds import add_noise, predicted_x0
from .vsd import (camera_condition, clamp_gradient, initial_latents, lora_guided_noise, lora_loss,
                  lora_training_batch, sample_latents, vsd_image_gradient, vsd_loss, vsd_weight)


class VSDGuidance(ScoreDistillationGuidance):
    """Callable like threestudio's VSD guidance: returns ``loss_vsd``, ``loss_lora``,
    ``grad_norm``, ``min_step`` / ``max_step`` and the SDS path's Perp-Neg and D-SDS diagnostics
    (``loss_vsd_img`` with ``use_img_loss``). ``lora`` (default: built from the backbone and
    ``pretrained_model_name_or_path_lora``) is eps_phi; its ``parameters()`` are what trains."""

    METHOD = "vsd"
    FINITE_KEYS = ("loss_vsd", "loss_lora", "grad_norm", "loss_vsd_img")

    def __init__(self, config: VSDConfig, device: torch.device,
                 backbone: Optional[DiffusionBackbone] = None, lora: Optional[LoRAUNet] = None,
                 info: Optional[Callable[[str], None]] = None,
                 warn: Optional[Callable[[str], None]] = None) -> None:
        if not isinstance(config, VSDConfig):
            raise TypeError("VSDGuidance needs a VSDConfig")
        super().__init__(config, device, backbone, info, warn)
        self.lora = lora if lora is not None else LoRAUNet(self.backbone,
                                                           config.pretrained_model_name_or_path_lora)
        where = "the pretrained UNet (shared)" if self.lora.shared else "its own UNet"
        count = sum(p.numel() for p in self.lora.parameters())
        self.info(f"VSD: LoRA branch on {where}, {count} trainable parameters")

    def __call__(self, rgb: Tensor, prompt_utils: Any, elevation: Tensor, azimuth: Tensor,
                 camera_distances: Tensor, mvp_mtx: Optional[Tensor] = None, c2w: Optional[Tensor] = None,
                 rgb_as_latents: bool = False, guidance_eval: bool = False, **kwargs: Any) -> Dict[str, Any]:
        if guidance_eval:
            raise ConfigError("guidance_eval", True, "is not available with VSD (threestudio's VSD "
                              "guidance has no guidance_eval either)", [False])
        decision = self.begin_step(prompt_utils)
        camera = self.camera(mvp_mtx, c2w)
        latents, image = self.model_inputs(rgb, rgb_as_latents)
        batch = latents.shape[0]
        t = torch.randint(self.min_step, self.max_step + 1, [batch], dtype=torch.long, device=latents.device)
        noise = torch.randn_like(latents)
        out = self.vsd_step(latents, image, t, noise, prompt_utils, (elevation, azimuth, camera_distances),
                            camera, decision)
        out["loss_lora"] = self.train_lora(latents, self.view_independent_text(prompt_utils, batch), camera)
        self.check_finite(rgb, out)
        return out

    def camera(self, mvp_mtx: Optional[Tensor], c2w: Optional[Tensor]) -> Tensor:
        """The LoRA's camera [B, 16] from the batch's matrices (threestudio's systems pass both)."""
        kind = self.config.camera_condition_type
        if (c2w if kind == "extrinsics" else mvp_mtx) is None:
            raise ValueError(f"VSD with camera_condition_type {kind!r} needs the batch's "
                             f"{'c2w' if kind == 'extrinsics' else 'mvp_mtx'} (threestudio's random-camera "
                             "data module gives it)")
        return camera_condition(kind, c2w, mvp_mtx).float()

    def view_independent_text(self, prompt_utils: Any, batch: int) -> Tensor:
        """The LoRA branch's prompt: the view-independent one, for every sample."""
        return prompt_utils.text_embeddings.expand(batch, -1, -1)

    def vsd_step(self, latents: Tensor, image: Optional[Tensor], t: Tensor, noise: Tensor, prompt_utils: Any,
                 cams: Tuple[Tensor, Tensor, Tensor], camera: Tensor, decision: PerpNegDecision) -> Dict[str, Any]:
        """The VSD gradient and loss for given t [B] and noise (no LoRA training here)."""
        batch = latents.shape[0]
        abar = self.alphas_cumprod[t]
        x_t = add_noise(latents.detach(), noise, abar)
        guided = self.guided_noise(x_t, t, prompt_utils, *cams, decision)
        text = self.view_independent_text(prompt_utils, batch).to(x_t.device)
        eps_lora = lora_guided_noise(self.lora.output, x_t, t, text, camera.to(x_t.device),
                                     self.config.guidance_scale_lora, self.lora.alphas_cumprod[t],
                                     self.lora.prediction_type)
        w = vsd_weight(abar).view(-1, 1, 1, 1)
        # the SDS path's gradient with eps_lora in place of eps: w (eps_pre - eps_lora), clipped
        grad, diagnostics = self.score_gradient(guided.eps_hat, eps_lora, w)
        out: Dict[str, Any] = {
            "loss_vsd": vsd_loss(latents, grad),
            "grad_norm": grad.norm(),
            **diagnostics,
            **self.step_diagnostics(guided, batch, guided.cond.num_rows + 2 * batch),  # + the LoRA's 2B rows
        }
        if self.config.use_img_loss:
            out["loss_vsd_img"] = self.vsd_image_loss(image, x_t, guided.eps_hat, eps_lora, abar)
        return out

    def train_lora(self, latents: Tensor, text: Tensor, camera: Tensor,
                   generator: Optional[torch.Generator] = None) -> Tensor:
        """loss_lora: one denoising step's loss of eps_phi on the (detached) renders."""
        c = self.config
        batch = lora_training_batch(latents, text, camera.to(latents.device), self.lora.alphas_cumprod,
                                    self.lora.prediction_type, c.lora_n_timestamp_samples,
                                    c.lora_cfg_training, generator)
        return lora_loss(self.lora.output, batch)

    def vsd_image_loss(self, image: Tensor, x_t: Tensor, eps_pre: Tensor, eps_lora: Tensor,
                       abar: Tensor) -> Tensor:
        """HiFA's image term of threestudio's VSD: the images of the two one-step x0 estimates."""
        with torch.no_grad():
            image_pre = self.backbone.decode_latents(predicted_x0(x_t, eps_pre, abar))
            image_lora = self.backbone.decode_latents(predicted_x0(x_t, eps_lora, abar))
        grad_img = clamp_gradient(vsd_image_gradient(image_lora, image_pre, abar).to(image.dtype),
                                  self.grad_clip_value)
        target = (image - grad_img).detach()
        return 0.5 * F.mse_loss(image, target, reduction="sum") / image.shape[0]

    # -- samples (system.visualize_samples) -----------------------------------------------------
    @torch.no_grad()
    def sample(self, prompt_utils: Any, elevation: Tensor, azimuth: Tensor, camera_distances: Tensor,
               seed: int = 0) -> Tensor:
        """threestudio's ``sample``: images [B, H, W, 3] in [0, 1] drawn from the pretrained model
        with 25 DPM-Solver++ steps from the noise of ``seed``, each step the path's guided noise
        (CFG with the view-dependent prompts, as threestudio; Perp-Neg when it is on, which
        threestudio's VSD sample never uses)."""
        decision = self.perp_neg(prompt_utils)

        def predict(x_t: Tensor, t: Tensor) -> Tensor:
            return self.guided_noise(x_t, t, prompt_utils, elevation, azimuth, camera_distances, decision).eps_hat

        sampler = dpm_solver_sampler(self.backbone.scheduler_config)
        return self._draw(sampler, predict, self.backbone.unet, elevation.shape[0], seed)

    @torch.no_grad()
    def sample_lora(self, prompt_utils: Any, camera: Tensor, seed: int = 0) -> Tensor:
        """threestudio's ``sample_lora``: images [B, H, W, 3] in [0, 1] drawn from the LoRA model
        eps_phi with its camera [B, 16], CFG with ``guidance_scale_lora`` between (prompt, camera)
        and (unconditional prompt, zero camera), the view-independent prompts (threestudio's)."""
        batch = camera.shape[0]
        text = prompt_utils.text_embeddings.expand(batch, -1, -1).to(self.device)
        uncond = prompt_utils.uncond_text_embeddings.expand(batch, -1, -1).to(self.device)
        camera = camera.to(self.device).float()

        def predict(x_t: Tensor, t: Tensor) -> Tensor:
            return lora_guided_noise(self.lora.output, x_t, t, text, camera, self.config.guidance_scale_lora,
                                     self.lora.alphas_cumprod[t], self.lora.prediction_type, uncond)

        return self._draw(dpm_solver_sampler(self.lora.scheduler_config), predict, self.lora.unet, batch, seed)

    def _draw(self, sampler: Any, predict: Callable[[Tensor, Tensor], Tensor], unet: Any, batch: int,
              seed: int) -> Tensor:
        """Latents of the UNet's sample size from the seed's noise, denoised, VAE-decoded at their
        own size (threestudio: the LoRA model's sample size, the pretrained model's VAE)."""
        unet_config = unet.config
        shape = (batch, unet_config.in_channels, unet_config.sample_size, unet_config.sample_size)
        latents = initial_latents(shape, seed, self.device, self.backbone.dtype)
        latents = sample_latents(sampler, predict, latents, VSD_SAMPLE_STEPS)
        return self.backbone.decode(latents).permute(0, 2, 3, 1).float()
