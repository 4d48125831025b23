"""Stable Diffusion (v1.x / v2.x layout) as a score-distillation backbone.

Loads only what SDS needs: the UNet, the VAE and the noise schedule, each with
``from_pretrained`` from a hub id or a local folder in the diffusers layout
(``unet/``, ``vae/``, ``scheduler/``, and ``tokenizer/`` + ``text_encoder/`` when a prompt must
be encoded). The text encoder is loaded only on demand and freed again.
"""

from __future__ import annotations

import logging
import os
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import ConfigError
from .base import BackboneOptions, LoadedBackbone, autocast_disabled, configure_unet

logger = logging.getLogger(__name__)


class StableDiffusionBackbone(LoadedBackbone):
    DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
    DEFAULT_GUIDANCE_SCALE = 100.0
    DEFAULT_CLIP = (2.0, 8.0)  # D-SDS appendix C: 2.0 -> 8.0 with Stable Diffusion

    def __init__(self, options: BackboneOptions, device: torch.device) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        path = self._resolve(options, device)

        self.unet = UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", torch_dtype=self.dtype
        ).to(self.device)
        self.vae = AutoencoderKL.from_pretrained(
            path, subfolder="vae", torch_dtype=self.dtype
        ).to(self.device)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        for module in (self.unet, self.vae):
            module.eval()
            module.requires_grad_(False)
        if options.enable_memory_efficient_attention:
            logger.info("PyTorch 2 uses memory-efficient attention (SDPA) by default.")
        configure_unet(self.unet, options)

        self.num_train_timesteps: int = scheduler.config.num_train_timesteps
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.prediction_type: str = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                "pretrained_model_name_or_path", path,
                f"scheduler prediction_type {self.prediction_type!r} is not supported",
                ["epsilon", "v_prediction"],
            )
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_size: int = int(self.unet.config.sample_size)
        self.image_size: int = self.latent_size * vae_scale
        self.scaling_factor: float = float(self.vae.config.scaling_factor)

    def to_model_space(self, rgb_bchw: Tensor, rgb_as_latents: bool = False) -> Tensor:
        if rgb_as_latents:
            size = (self.latent_size, self.latent_size)
            return F.interpolate(rgb_bchw, size, mode="bilinear", align_corners=False).float()
        size = (self.image_size, self.image_size)
        images = F.interpolate(rgb_bchw, size, mode="bilinear", align_corners=False)
        with autocast_disabled(self.device):
            posterior = self.vae.encode((images * 2.0 - 1.0).to(self.dtype)).latent_dist
            return (posterior.sample() * self.scaling_factor).float()

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        with autocast_disabled(self.device):
            out = self.unet(
                x_t.to(self.dtype), t, encoder_hidden_states=text_embeddings.to(self.dtype)
            ).sample.float()
        if self.prediction_type == "v_prediction":
            # v = sqrt(abar) eps - sqrt(1-abar) x0  =>  eps = sqrt(abar) v + sqrt(1-abar) x_t
            abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = abar.sqrt() * out + (1.0 - abar).sqrt() * x_t.float()
        return out

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images [B, 3, H, W] in [0, 1] (for 2D sampling)."""
        with autocast_disabled(self.device):
            images = self.vae.decode((latents / self.scaling_factor).to(self.dtype)).sample
        return (images.float() * 0.5 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_prompts(self, prompts: List[str], keep_encoder: bool = False) -> Tensor:
        """CLIP text embeddings exactly as threestudio's SD prompt processor makes them. The text
        encoder is loaded on demand and freed again unless ``keep_encoder`` (2D sampling)."""
        from transformers import AutoTokenizer, CLIPTextModel

        if getattr(self, "_text_encoder", None) is None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, subfolder="tokenizer")
            self._text_encoder = CLIPTextModel.from_pretrained(
                self.model_path, subfolder="text_encoder").to(self.device).eval()
        tokens = self._tokenizer(
            prompts, padding="max_length", max_length=self._tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        embeddings = self._text_encoder(tokens.input_ids.to(self.device))[0]
        if not keep_encoder:
            self._text_encoder = self._tokenizer = None
        return embeddings
