"""The lab prior: a small text-to-image latent diffusion model in the Stable Diffusion layout.

Folder layout (loads with ``from_pretrained`` wherever a Stable Diffusion folder is expected:
threestudio's stock prompt processor and ``stable-diffusion-guidance``, StableDiffusionPipeline,
our backbone and processors, diffusers 0.19.3 and 0.42)::

    model_index.json   StableDiffusionPipeline, no safety checker
    unet/              UNet2DConditionModel, latent 16x16x4
    vae/               AutoencoderKL with one down-sampling (factor 2): 32x32 RGB <-> 16x16x4
    text_encoder/      CLIPTextModel (narrow; the 49408-token embedding table dominates its size)
    tokenizer/         CLIPTokenizer with the real CLIP BPE (lab/vocab.py)
    scheduler/         DDPMScheduler, Stable Diffusion's scaled_linear betas 0.00085 -> 0.012
    lab_training.json  the training settings (including the world's bias) and wall times

Weights are stored in fp16 (safetensors) and load as fp32 by default (the text encoder's config
says float32). Training (``train_prior``): the VAE first (L1 + small KL), then the UNet and the
text encoder together on the VAE's latents (epsilon prediction, the caption dropped for 10 % of
the samples so that the empty prompt is the unconditional of classifier-free guidance, min-SNR
loss weighting, EMA of the weights).

This module holds the settings and the model definitions; ``prior_training`` trains them,
``prior_folder`` writes the folder. Which prior version used which setting:
``docs/model-history.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Tuple

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from antijanus.utils.errors import ConfigError, require_probability
from antijanus.utils.imaging import check_lowres
from .data import WorldBias

LATENT_CHANNELS = 4


@dataclass(frozen=True)
class PriorSettings:
    """Everything that determines the trained prior (saved as lab_training.json)."""

    seed: int = 1
    bias: WorldBias = field(default_factory=WorldBias)
    threads: int = 2  # torch threads (a run is reproducible with the same count)
    # text encoder (CLIP layout)
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_ff: int = 128
    # VAE
    vae_channels: Tuple[int, ...] = (32, 32)  # len - 1 down-samplings: factor 2
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # a share of the VAE's training images at a lower effective resolution (shrunk to a side in
    # ``vae_lowres_sides`` and enlarged back), reconstructed as they are: a 3D run's latent
    # volume renders smooth latents (docs/research-log.md, "Round 2")
    vae_p_lowres: float = 0.3
    vae_lowres_sides: Tuple[int, int] = (8, 16)
    # EQ-VAE (Kouzelis et al., ICML 2025, "EQ-VAE: Equivariance Regularized Latent Space for
    # Improved Generative Image Modeling"): with this probability a batch's latents are scaled by
    # a factor uniform in ``vae_equivariance_scales`` and turned by a multiple of 90 degrees
    # before decoding, and the decoder must give the images transformed alike,
    # D(tau(E(x))) = tau(x) (``prior_training.equivariance_pair``); 0: off
    vae_p_equivariance: float = 0.5
    vae_equivariance_scales: Tuple[float, float] = (0.5, 1.0)
    # UNet
    unet_channels: Tuple[int, ...] = (32, 64, 64)  # cross-attention at 8x8 and 4x4 only
    unet_heads: int = 4
    unet_steps: int = 12000  # about an hour on a 2-core CPU (the prior's lab_training.json, timings)
    unet_batch: int = 32
    unet_lr: float = 1e-3
    unet_warmup: int = 200
    ema_decay: float = 0.999
    p_uncond: float = 0.1  # caption dropped -> "" (the unconditional of CFG)
    min_snr_gamma: float = 5.0  # min-SNR-gamma loss weighting (Hang et al. 2023); 0: plain MSE
    snapshots: Tuple[int, ...] = ()  # steps after which the averaged weights are also saved (a study)

    def __post_init__(self) -> None:
        check_lowres("vae_p_lowres", self.vae_p_lowres, "vae_lowres_sides", self.vae_lowres_sides)
        require_probability("vae_p_equivariance", self.vae_p_equivariance)
        scales = self.vae_equivariance_scales
        if (not isinstance(scales, (tuple, list)) or len(scales) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in scales)
                or not 0.0 < scales[0] <= scales[1] <= 1.0):
            raise ConfigError("vae_equivariance_scales", scales,
                              "(smallest, largest) scale factors, 0 < smallest <= largest <= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def scheduler_config() -> dict:
    """Stable Diffusion's training noise schedule."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False, steps_offset=1)


# Keys of Stable Diffusion's scheduler config that DDPM does not take but DDIM (our sampler,
# StableDiffusionPipeline's alternatives) reads from the same file.
SCHEDULER_EXTRAS = {"set_alpha_to_one": False, "skip_prk_steps": True}


def build_vae(settings: PriorSettings):
    n = len(settings.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=32,
                         block_out_channels=tuple(settings.vae_channels), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         norm_num_groups=16)


def build_unet(settings: PriorSettings, latent_size: int = 16):
    n = len(settings.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=tuple(settings.unet_channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=settings.text_width, attention_head_dim=settings.unet_heads, norm_num_groups=16)


def build_text_encoder(settings: PriorSettings, vocab_size: int = 49408):
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=settings.text_width,
                            intermediate_size=settings.text_ff, num_hidden_layers=settings.text_layers,
                            num_attention_heads=settings.text_heads, max_position_embeddings=77,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                            projection_dim=settings.text_width)
    model = CLIPTextModel(config)
    # Zero token embeddings: a token never seen in training stays exactly 0 (no random
    # direction for words outside the world), and the stored table compresses.
    torch.nn.init.zeros_(model.get_input_embeddings().weight)
    return model
