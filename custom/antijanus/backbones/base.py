"""The small interface between the guidance and a diffusion model.

The guidance never touches a UNet, VAE or scheduler directly: it asks a backbone to turn
rendered images into the diffusion model's input space, to predict the noise (epsilon) of a
batch of rows in one call, and to encode a text prompt. Stable Diffusion (latent space) and
DeepFloyd IF (pixel space) implement it, together with threestudio's public guidance methods
(``encode_images``, ``decode_latents``) and a sampler for the denoising previews.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import ConfigError
from ..utils.loading import check_model_path, require_layout

#: The config key every backbone loads from.
MODEL_KEY = "pretrained_model_name_or_path"


@dataclass
class BackboneOptions:
    """Loading options shared by every backbone (threestudio's guidance keys)."""

    pretrained_model_name_or_path: Optional[str] = None  # None: the backbone's default model
    half_precision_weights: bool = True
    enable_memory_efficient_attention: bool = False
    enable_sequential_cpu_offload: bool = False  # CUDA only, as diffusers' pipelines
    enable_attention_slicing: bool = False
    enable_channels_last_format: Optional[bool] = None  # None: SD false, IF true (threestudio's)
    token_merging: bool = False
    token_merging_params: Dict[str, Any] = field(default_factory=dict)


def autocast_disabled(device: torch.device):
    """Run the diffusion model in its own dtype even inside a 16-mixed Lightning step."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def configure_unet(unet: torch.nn.Module, options: BackboneOptions, channels_last_default: bool) -> None:
    """Apply the memory/speed options to a diffusers UNet."""
    if options.enable_attention_slicing:
        unet.set_attention_slice(1)
    channels_last = channels_last_default if options.enable_channels_last_format is None \
        else options.enable_channels_last_format
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if options.token_merging:
        try:
            import tomesd  # optional: token merging (ToMe)
        except ImportError:
            raise ConfigError("token_merging", True, "needs the `tomesd` package "
                              "(pip install tomesd)") from None
        tomesd.apply_patch(unet, **dict(options.token_merging_params))


def check_offload(options: BackboneOptions, device: torch.device) -> None:
    """Sequential CPU offload keeps the weights in CPU memory and streams each layer to the GPU
    when it runs (accelerate's ``cpu_offload``, what diffusers' ``enable_sequential_cpu_offload``
    does for threestudio). It only exists for a CUDA execution device."""
    if options.enable_sequential_cpu_offload and device.type != "cuda":
        raise ConfigError("enable_sequential_cpu_offload", True,
                          f"needs a CUDA device (this run uses {device}): it keeps the weights in "
                          "CPU memory and streams them to the GPU layer by layer, as diffusers' "
                          "pipelines do for threestudio", [False])


def place(modules: Sequence[torch.nn.Module], options: BackboneOptions, device: torch.device) -> None:
    """Move the modules to the device, or attach sequential CPU offload hooks."""
    if options.enable_sequential_cpu_offload:
        try:
            from accelerate import cpu_offload  # optional: sequential CPU offload
        except ImportError:
            raise ConfigError("enable_sequential_cpu_offload", True, "needs the `accelerate` "
                              "package (pip install accelerate)") from None
        for module in modules:
            cpu_offload(module, execution_device=device)
    else:
        for module in modules:
            module.to(device)


class LoadedBackbone:
    """What both backbones share: which model, where, in which dtype (the start of their
    constructors), the UNet call, and the methods that only depend on the model's sizes.
    Each backbone says how its UNet output becomes epsilon (``noise_from_output``)."""

    DEFAULT_MODEL = ""
    KIND = ""  # e.g. "Stable Diffusion", for error messages
    LAYOUT: Tuple[str, ...] = ()  # subfolders a local model folder must have
    image_size: int  # the model's image size (SD: latent size x VAE factor; IF: the UNet's)
    unet: torch.nn.Module  # a diffusers UNet2DConditionModel, loaded by the backbone

    def _resolve(self, options: BackboneOptions, device) -> str:
        path = options.pretrained_model_name_or_path or self.DEFAULT_MODEL
        check_model_path(MODEL_KEY, path)
        require_layout(MODEL_KEY, path, self.KIND, self.LAYOUT)
        self.model_path = path
        self.options = options
        self.device = torch.device(device)
        check_offload(options, self.device)
        self.dtype = torch.float16 if options.half_precision_weights else torch.float32
        return path

    def render_to_image(self, rgb_bchw: Tensor) -> Tensor:
        """Renders [B, 3, H, W] in [0, 1] resized to the model's image size (bilinear)."""
        size = (self.image_size, self.image_size)
        return F.interpolate(rgb_bchw, size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def unet_output(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        """The UNet's raw output for every row in one call, in the model's dtype (outside any
        autocast), returned fp32. x_t [N, C, h, w], t [N], text_embeddings [N, tokens, features]."""
        with autocast_disabled(self.device):
            return self.unet(
                x_t.to(self.dtype), t, encoder_hidden_states=text_embeddings.to(self.dtype)
            ).sample.float()

    def noise_from_output(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The UNet's output -> (epsilon, learned variance or None): what differs per model."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_noise_and_variance(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor
                                   ) -> Tuple[Tensor, Optional[Tensor]]:
        """Epsilon and the learned variance channels (None for models without them), fp32."""
        return self.noise_from_output(self.unet_output(x_t, t, text_embeddings), x_t, t)

    def predict_noise(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        """Epsilon only."""
        return self.predict_noise_and_variance(x_t, t, text_embeddings)[0]


@runtime_checkable
class DiffusionBackbone(Protocol):
    """Everything the guidance asks of a diffusion model (both backbones implement it)."""

    #: Number of training timesteps T of the noise schedule.
    num_train_timesteps: int
    #: abar_t for t = 0 .. T-1 of the model's own schedule, fp32, on the backbone's device.
    alphas_cumprod: Tensor

    def to_model_space(self, rgb_bchw: Tensor, rgb_as_latents: bool = False) -> Tensor:
        """Rendered images [B, 3, H, W] in [0, 1] (or latents) -> the model's x_0, fp32."""

    def predict_noise(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor) -> Tensor:
        """Epsilon prediction for every row in one batched call (no grad), fp32."""

    def predict_noise_and_variance(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor
                                   ) -> Tuple[Tensor, Optional[Tensor]]:
        """Epsilon and the learned variance channels (None for models without them)."""

    def noise_schedule(self, sjc: bool = False) -> Tensor:
        """abar_t of the path: the model's own, or SJC's (threestudio forces SD's for SJC)."""

    def encode_prompts(self, prompts: List[str]) -> Tensor:
        """Text embeddings as the prompt processors make them, [N, tokens, features]."""

    def render_to_image(self, rgb_bchw: Tensor) -> Tensor:
        """Renders [B, 3, H, W] in [0, 1] resized to the model's image size (HiFA's image)."""

    def encode_images(self, images: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] -> model space (threestudio's ``encode_images``)."""

    def decode_latents(self, latents: Tensor, latent_height: Optional[int] = None,
                       latent_width: Optional[int] = None) -> Tensor:
        """Model space -> images [B, 3, H, W] in [0, 1] (threestudio's ``decode_latents``)."""

    def make_sampler(self, sjc: bool = False):
        """A diffusers scheduler for the previews, fed epsilon predictions."""
