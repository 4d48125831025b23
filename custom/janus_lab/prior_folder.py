"""Writing the lab prior's Stable Diffusion folder: unet/, vae/, text_encoder/ (fp16 weights that
load as fp32), scheduler/ and model_index.json, in the layout every diffusers and transformers
version the plugin supports reads (layout: ``prior``'s docstring)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from typing import Dict, Optional

import diffusers
import torch
from diffusers import DDPMScheduler
from torch import Tensor

from antijanus.utils.cache import save_safetensors
from .prior import SCHEDULER_EXTRAS, scheduler_config


def _fp16_state(module: torch.nn.Module, prefix: str = "") -> Dict[str, Tensor]:
    return {prefix + k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()
            if v.is_floating_point()}


def save_text_encoder(model, folder: str) -> None:
    """CLIPTextModel in the layout every transformers version reads: keys prefixed
    ``text_model.`` (transformers 4.28 needs them), fp16 tensors, a config that says float32."""
    os.makedirs(folder, exist_ok=True)
    config = model.config.to_dict()
    config.update(torch_dtype="float32", dtype="float32", architectures=["CLIPTextModel"])
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    state = _fp16_state(model)
    state = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}
    save_safetensors(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def save_diffusers(model, folder: str) -> None:
    """A diffusers model folder with fp16 weights (loaded as fp32 unless asked otherwise); the
    model itself is left as it was."""
    copy.deepcopy(model).to(torch.float16).save_pretrained(folder, safe_serialization=True)


def save_prior(out: str, unet, vae, text_encoder, tokenizer_folder: Optional[str] = None) -> None:
    """The Stable Diffusion folder (unet/, vae/, text_encoder/, scheduler/, model_index.json; the
    tokenizer copied from ``tokenizer_folder`` when given)."""
    save_diffusers(unet, os.path.join(out, "unet"))
    save_diffusers(vae, os.path.join(out, "vae"))
    save_text_encoder(text_encoder, os.path.join(out, "text_encoder"))
    write_scheduler(out)
    write_model_index(out)
    if tokenizer_folder is not None:
        shutil.copytree(tokenizer_folder, os.path.join(out, "tokenizer"), dirs_exist_ok=True)


def write_model_index(folder: str) -> None:
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def write_scheduler(folder: str) -> None:
    path = os.path.join(folder, "scheduler")
    DDPMScheduler(**scheduler_config()).save_pretrained(path)
    with open(os.path.join(path, "scheduler_config.json")) as f:
        config = json.load(f)
    config.update(SCHEDULER_EXTRAS)
    with open(os.path.join(path, "scheduler_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
