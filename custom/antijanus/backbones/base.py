"""The small interface between the guidance and a diffusion model.

The guidance never touches a UNet, VAE or scheduler directly: it asks a backbone to turn
rendered images into the diffusion model's input space, to predict the noise (epsilon) of a
batch of rows in one call, and to encode a text prompt. Stable Diffusion (latent space) and
DeepFloyd IF (pixel space) implement it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

import torch

from torch import Tensor

from ..utils.errors import ConfigError
from ..utils.loading import check_model_path


@dataclass
class BackboneOptions:
    """Loading options shared by every backbone (threestudio's guidance keys)."""

    pretrained_model_name_or_path: Optional[str] = None  # None: the backbone's default model
    half_precision_weights: bool = True
    enable_memory_efficient_attention: bool = False
    enable_attention_slicing: bool = False
    enable_channels_last_format: bool = False
    token_merging: bool = False
    token_merging_params: Dict[str, Any] = field(default_factory=dict)


def autocast_disabled(device: torch.device):
    """Run the diffusion model in its own dtype even inside a 16-mixed Lightning step."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def configure_unet(unet: torch.nn.Module, options: BackboneOptions) -> None:
    """Apply the memory/speed options to a diffusers UNet."""
    if options.enable_attention_slicing:
        unet.set_attention_slice(1)
    if options.enable_channels_last_format:
        unet.to(memory_format=torch.channels_last)
    if options.token_merging:
        try:
            import tomesd
        except ImportError:
            raise ConfigError("token_merging", True, "needs the `tomesd` package "
                              "(pip install tomesd)") from None
        tomesd.apply_patch(unet, **dict(options.token_merging_params))


class LoadedBackbone:
    """Shared start of the backbones' constructors: which model, where, in which dtype."""

    DEFAULT_MODEL = ""

    def _resolve(self, options: BackboneOptions, device) -> str:
        path = options.pretrained_model_name_or_path or self.DEFAULT_MODEL
        check_model_path("pretrained_model_name_or_path", path)
        self.model_path = path
        self.options = options
        self.device = torch.device(device)
        self.dtype = torch.float16 if options.half_precision_weights else torch.float32
        return path


@runtime_checkable
class DiffusionBackbone(Protocol):
    #: Number of training timesteps T of the noise schedule.
    num_train_timesteps: int
    #: abar_t for t = 0 .. T-1, fp32, on the backbone's device.
    alphas_cumprod: Tensor

    def to_model_space(self, rgb_bchw: Tensor, rgb_as_latents: bool = False) -> Tensor:
        """Rendered images [B, 3, H, W] in [0, 1] (or latents) -> the model's x_0, fp32."""

    def predict_noise(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        """Epsilon prediction for every row in one batched call (no grad), fp32."""

    def encode_prompts(self, prompts: List[str]) -> Tensor:
        """Text embeddings as the prompt processors make them, [N, tokens, features]."""
