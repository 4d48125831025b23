"""VSD's second noise predictor eps_phi: a LoRA of a Stable Diffusion UNet with threestudio's
camera embedding (``lora.py``), called with the camera and with gradients allowed (the LoRA is
trained on the renders, ``core/vsd.py: lora_loss``).

Which UNet: threestudio's rule (``shares_unet``). When ``pretrained_model_name_or_path_lora``
names the pretrained model, the LoRA goes on the backbone's own UNet, switched on only inside
``lora_branch`` (the pretrained branch stays the base UNet, bit for bit); otherwise the LoRA
model's UNet is loaded beside it (in the backbone's dtype, with its options; no second VAE or
text encoder, as threestudio). The LoRA model's own noise schedule and prediction type convert
its outputs and make its training targets (``alphas_cumprod``, ``prediction_type``); its
scheduler config makes ``sample_lora``'s sampler (``scheduler_config``).
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from ..utils.errors import ConfigError
from ..utils.loading import check_model_path, load_pretrained, require_layout
from .base import autocast_disabled, configure_unet, place
from .lora import (DEFAULT_RANK, add_lora, camera_embedding, lora_branch, shares_unet,
                   time_embedding_dim, trainable_parameters)

#: The config key of the LoRA branch's model (threestudio's).
LORA_MODEL_KEY = "pretrained_model_name_or_path_lora"
PREDICTION_TYPES = ("epsilon", "v_prediction")


class LoRAUNet:
    """eps_phi: ``output(x_t, t, text, camera)`` is the LoRA UNet's raw output (fp32), with the
    camera [N, 16] as its class embedding's input; gradients reach the LoRA and the camera
    embedding (``parameters``), never the UNet."""

    def __init__(self, backbone, lora_model: str, rank: int = DEFAULT_RANK) -> None:
        self.device, self.dtype = backbone.device, backbone.dtype
        self.shared = shares_unet(backbone.model_path, lora_model)
        if self.shared:
            self.unet = backbone.unet
            self.alphas_cumprod: Tensor = backbone.alphas_cumprod
            self.prediction_type: str = backbone.prediction_type
            self.scheduler_config = backbone.scheduler_config
        else:
            self.unet, scheduler = load_lora_model(lora_model, backbone)
            self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
            self.prediction_type = scheduler.config.prediction_type
            self.scheduler_config = scheduler.config
            if self.prediction_type not in PREDICTION_TYPES:
                raise ConfigError(LORA_MODEL_KEY, lora_model, f"scheduler prediction_type "
                                  f"{self.prediction_type!r} is not supported", PREDICTION_TYPES)
        self.lora = add_lora(self.unet, rank, device=self.device)
        self.camera = camera_embedding(time_embedding_dim(self.unet), output_dtype=self.dtype,
                                       device=self.device)

    def output(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor) -> Tensor:
        """The LoRA UNet on every row in one call (x_t [N, C, h, w], t [N], text [N, tokens,
        features], camera [N, 16]), in the model's dtype outside any autocast, returned fp32."""
        with autocast_disabled(self.device), lora_branch(self.unet, self.lora, self.camera) as unet:
            return unet(x_t.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype),
                        class_labels=camera.float()).sample.float()

    def modules(self) -> List[nn.Module]:
        return [self.lora, self.camera]

    def parameters(self) -> List[nn.Parameter]:
        return trainable_parameters(self.lora, self.camera)


def load_lora_model(path: str, backbone):
    """The LoRA model's UNet (frozen, the backbone's dtype and options) and its DDPM scheduler."""
    from diffusers import DDPMScheduler, UNet2DConditionModel  # deferred: slow import

    check_model_path(LORA_MODEL_KEY, path)
    require_layout(LORA_MODEL_KEY, path, "Stable Diffusion", ("unet", "scheduler"))
    unet = load_pretrained(LORA_MODEL_KEY, path, "Stable Diffusion UNet", lambda: (
        UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=backbone.dtype)))
    scheduler = load_pretrained(LORA_MODEL_KEY, path, "Stable Diffusion scheduler", lambda: (
        DDPMScheduler.from_pretrained(path, subfolder="scheduler")))
    unet.eval()
    unet.requires_grad_(False)
    configure_unet(unet, backbone.options, channels_last_default=False)
    place((unet,), backbone.options, backbone.device)
    return unet, scheduler
