"""DeepFloyd IF stage I (pixel space, 64x64) as a score-distillation backbone.

Loads the stage-I UNet and its noise schedule with ``from_pretrained`` (hub id or a local folder
in the diffusers layout: ``unet/``, ``scheduler/``; ``tokenizer/`` + ``text_encoder/`` (T5) only
when a prompt must be encoded). IF's UNet predicts epsilon and a learned variance
(6 channels): the guidance uses the first 3, the previews' DDPM sampler both. There is no latent
space: rendered images are resized to the UNet's resolution and mapped to [-1, 1]; "decoding" is
the inverse map, clamped to [0, 1].
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import ConfigError
from ..utils.loading import load_pretrained
from .base import MODEL_KEY, BackboneOptions, LoadedBackbone, configure_unet, place
from .text_encoding import load_t5_encoder, load_tokenizer, t5_embeddings

logger = logging.getLogger(__name__)


class DeepFloydIFBackbone(LoadedBackbone):
    DEFAULT_MODEL = "DeepFloyd/IF-I-XL-v1.0"
    DEFAULT_GUIDANCE_SCALE = 20.0  # threestudio's deep-floyd-guidance
    DEFAULT_CLIP = (0.5, 2.0)  # D-SDS appendix C / authors' grad_clip [0, 0.5, 2.0, 10000]
    KIND = "DeepFloyd IF stage I"
    LAYOUT = ("unet", "scheduler")

    def __init__(self, options: BackboneOptions, device: torch.device) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel  # deferred: slow import

        path = self._resolve(options, device)

        # The hub checkpoint ships fp16 weights as the "fp16" variant (threestudio loads that
        # with half precision); a folder without it loads its plain weights.
        def load_unet():
            if options.half_precision_weights:
                try:
                    return UNet2DConditionModel.from_pretrained(
                        path, subfolder="unet", torch_dtype=self.dtype, variant="fp16")
                except (OSError, ValueError):
                    pass
            return UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=self.dtype)

        self.unet = load_pretrained(MODEL_KEY, path, "DeepFloyd IF UNet", load_unet)
        self.unet = self.unet.eval().requires_grad_(False)
        if options.enable_memory_efficient_attention:
            logger.info("PyTorch 2 uses memory-efficient attention (SDPA) by default.")
        configure_unet(self.unet, options, channels_last_default=True)  # deep-floyd-guidance's default
        place((self.unet,), options, self.device)
        scheduler = load_pretrained(MODEL_KEY, path, "DeepFloyd IF scheduler", lambda: (
            DDPMScheduler.from_pretrained(path, subfolder="scheduler")))
        self.scheduler_config = scheduler.config
        self.num_train_timesteps: int = scheduler.config.num_train_timesteps
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.image_size: int = int(self.unet.config.sample_size)
        self.latent_size = self.image_size  # model space = pixel space

    # -- model space ---------------------------------------------------------------------------
    def encode_images(self, images: Tensor) -> Tensor:
        """[0, 1] images -> IF's [-1, 1] pixel space (no latent space)."""
        return images * 2.0 - 1.0

    def to_model_space(self, rgb_bchw: Tensor, rgb_as_latents: bool = False) -> Tensor:
        if rgb_as_latents:
            raise ConfigError("backbone", "deepfloyd-if", "has no latent space, but this system passes "
                              "latents (rgb_as_latents=True, e.g. latentnerf-system or sketchshape "
                              "before refinement): use a Stable Diffusion model "
                              "(pretrained_model_name_or_path) or a system that renders RGB",
                              ["stable-diffusion"])
        return self.encode_images(self.render_to_image(rgb_bchw)).float()

    def decode_latents(self, latents: Tensor, latent_height: Optional[int] = None,
                       latent_width: Optional[int] = None) -> Tensor:
        """Pixel space -> [0, 1] images: the identity map of [-1, 1] to [0, 1], clamped, at
        (latent_height, latent_width) (default: the UNet's 64x64)."""
        size = (latent_height or self.image_size, latent_width or self.image_size)
        images = F.interpolate(latents, size, mode="bilinear", align_corners=False)
        return (images * 0.5 + 0.5).clamp(0.0, 1.0)

    # -- noise ---------------------------------------------------------------------------------
    def noise_from_output(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """IF's UNet predicts [epsilon (C), learned variance (C)] along the channels."""
        channels = x_t.shape[1]
        return output[:, :channels], output[:, channels:]

    def noise_schedule(self, sjc: bool = False) -> Tensor:
        """IF's own schedule for both paths (threestudio has no SJC for IF; SJC's forced schedule
        is Stable Diffusion's)."""
        return self.alphas_cumprod

    def make_sampler(self, sjc: bool = False):
        """IF's own DDPM scheduler (learned-range variance), as threestudio's previews."""
        from diffusers import DDPMScheduler  # deferred: slow import

        return DDPMScheduler.from_config(self.scheduler_config)

    # -- text ----------------------------------------------------------------------------------
    def encode_prompts(self, prompts: List[str]) -> Tensor:
        """T5 embeddings exactly as threestudio's DeepFloyd prompt processor makes them
        (``text_encoding.t5_embeddings``); the encoder is loaded for the call and freed."""
        tokenizer = load_tokenizer(self.model_path)
        text_encoder = load_t5_encoder(self.model_path, self.dtype, self.device)
        return t5_embeddings(tokenizer, text_encoder, prompts).float()
