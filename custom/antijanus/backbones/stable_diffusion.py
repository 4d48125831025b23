"""Stable Diffusion (v1.x / v2.x layout) as a score-distillation backbone.

Loads only what SDS needs: the UNet, the VAE and the noise schedule, each with
``from_pretrained`` from a hub id or a local folder in the diffusers layout
(``unet/``, ``vae/``, ``scheduler/``, and ``tokenizer/`` + ``text_encoder/`` when a prompt must
be encoded). The text encoder is loaded only on demand and freed again. Sizes are the model's
own: renders are resized to the VAE's image size (512 for SD 1.x / 2.x-base, as threestudio's
fixed 512) and latents to the UNet's sample size (64).
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import ConfigError
from ..utils.loading import load_pretrained
from .base import (MODEL_KEY, BackboneOptions, LoadedBackbone, autocast_disabled, configure_unet,
                   place)
from .schedules import SJC_SCHEDULE, sjc_alphas_cumprod
from .text_encoding import clip_embeddings, load_clip_text_encoder, load_tokenizer

logger = logging.getLogger(__name__)


class StableDiffusionBackbone(LoadedBackbone):
    DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
    DEFAULT_GUIDANCE_SCALE = 100.0
    DEFAULT_CLIP = (2.0, 8.0)  # D-SDS appendix C / authors' grad_clip [0, 2.0, 8.0, 10000]
    KIND = "Stable Diffusion"
    LAYOUT = ("unet", "vae", "scheduler")

    def __init__(self, options: BackboneOptions, device: torch.device) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # deferred: slow import

        path = self._resolve(options, device)
        self.unet = load_pretrained(MODEL_KEY, path, "Stable Diffusion UNet", lambda: (
            UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=self.dtype)))
        self.vae = load_pretrained(MODEL_KEY, path, "Stable Diffusion VAE", lambda: (
            AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=self.dtype)))
        scheduler = load_pretrained(MODEL_KEY, path, "Stable Diffusion scheduler", lambda: (
            DDPMScheduler.from_pretrained(path, subfolder="scheduler")))
        for module in (self.unet, self.vae):
            module.eval()
            module.requires_grad_(False)
        if options.enable_memory_efficient_attention:
            logger.info("PyTorch 2 uses memory-efficient attention (SDPA) by default.")
        configure_unet(self.unet, options, channels_last_default=False)
        place((self.unet, self.vae), options, self.device)

        self.scheduler_config = scheduler.config
        self.num_train_timesteps: int = scheduler.config.num_train_timesteps
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.prediction_type: str = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                MODEL_KEY, path,
                f"scheduler prediction_type {self.prediction_type!r} is not supported",
                ["epsilon", "v_prediction"],
            )
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_size: int = int(self.unet.config.sample_size)
        self.image_size: int = self.latent_size * vae_scale
        self.scaling_factor: float = float(self.vae.config.scaling_factor)

    # -- model space ---------------------------------------------------------------------------
    def encode_images(self, images: Tensor) -> Tensor:
        """threestudio's ``encode_images``: [0, 1] images -> sampled, scaled VAE latents."""
        input_dtype = images.dtype
        with autocast_disabled(self.device):
            posterior = self.vae.encode((images * 2.0 - 1.0).to(self.dtype)).latent_dist
            return (posterior.sample() * self.scaling_factor).to(input_dtype)

    def to_model_space(self, rgb_bchw: Tensor, rgb_as_latents: bool = False) -> Tensor:
        if rgb_as_latents:
            size = (self.latent_size, self.latent_size)
            return F.interpolate(rgb_bchw, size, mode="bilinear", align_corners=False).float()
        return self.encode_images(self.render_to_image(rgb_bchw)).float()

    def decode_latents(self, latents: Tensor, latent_height: Optional[int] = None,
                       latent_width: Optional[int] = None) -> Tensor:
        """threestudio's ``decode_latents``: latents resized to (latent_height, latent_width)
        (default: the UNet's sample size, threestudio's 64), VAE-decoded to [0, 1] images."""
        input_dtype = latents.dtype
        size = (latent_height or self.latent_size, latent_width or self.latent_size)
        latents = F.interpolate(latents, size, mode="bilinear", align_corners=False)
        with autocast_disabled(self.device):
            images = self.vae.decode((latents / self.scaling_factor).to(self.dtype)).sample
        return (images * 0.5 + 0.5).clamp(0.0, 1.0).to(input_dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images [B, 3, H, W] in [0, 1] at the latents' own size (2D sampling)."""
        return self.decode_latents(latents.float(), *latents.shape[-2:])

    # -- noise ---------------------------------------------------------------------------------
    def noise_from_output(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Epsilon (a v-prediction converted), no learned variance."""
        if self.prediction_type == "v_prediction":
            # v = sqrt(abar) eps - sqrt(1-abar) x0  =>  eps = sqrt(abar) v + sqrt(1-abar) x_t
            abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            output = abar.sqrt() * output + (1.0 - abar).sqrt() * x_t.float()
        return output, None

    def noise_schedule(self, sjc: bool = False) -> Tensor:
        """threestudio runs SJC on SD's scaled-linear schedule whatever the folder says."""
        if sjc:
            return sjc_alphas_cumprod(self.num_train_timesteps).to(self.device)
        return self.alphas_cumprod

    def make_sampler(self, sjc: bool = False):
        """threestudio's preview sampler: DDIM (eta 1) for SDS, its SJC DDPM schedule for SJC;
        configured for epsilon (v-prediction outputs are converted)."""
        from diffusers import DDIMScheduler, DDPMScheduler  # deferred: slow import

        if sjc:
            return DDPMScheduler.from_config(self.scheduler_config, prediction_type="epsilon", **SJC_SCHEDULE)
        return DDIMScheduler.from_config(self.scheduler_config, prediction_type="epsilon")

    # -- text ----------------------------------------------------------------------------------
    def encode_prompts(self, prompts: List[str], keep_encoder: bool = False) -> Tensor:
        """CLIP text embeddings exactly as threestudio's SD prompt processor makes them
        (``text_encoding.clip_embeddings``). The text encoder is loaded on demand and freed again
        unless ``keep_encoder`` (2D sampling)."""
        if getattr(self, "_text_encoder", None) is None:
            self._tokenizer = load_tokenizer(self.model_path)
            self._text_encoder = load_clip_text_encoder(self.model_path).to(self.device)
        embeddings = clip_embeddings(self._tokenizer, self._text_encoder, prompts)
        if not keep_encoder:
            self._text_encoder = self._tokenizer = None
        return embeddings
