import json
import os
import re
from typing import Optional

from .base import BackboneOptions, DiffusionBackbone, check_model_path
from .deepfloyd_if import DeepFloydIFBackbone
from .stable_diffusion import StableDiffusionBackbone

#: Backbones by config name (the guidance's `backbone` key).
BACKBONES = {"stable-diffusion": StableDiffusionBackbone, "deepfloyd-if": DeepFloydIFBackbone}


def detect_backbone(name_or_path: Optional[str]) -> str:
    """The backbone a model is, so that a `deep-floyd-guidance` config ports by its type name:
    a local folder by its ``model_index.json`` pipeline class (IFPipeline: DeepFloyd IF) or, without
    one, by its UNet (IF predicts epsilon and variance: out_channels = 2 x in_channels); a hub id
    by name (``DeepFloyd/IF-...``). Anything else, and no model, is Stable Diffusion."""
    if not name_or_path:
        return "stable-diffusion"
    folder = os.path.expanduser(name_or_path)
    if os.path.isdir(folder):
        index = _read_json(os.path.join(folder, "model_index.json"))
        if "_class_name" in index:
            return "deepfloyd-if" if index["_class_name"].startswith("IF") else "stable-diffusion"
        unet = _read_json(os.path.join(folder, "unet", "config.json"))
        if unet.get("out_channels") and unet.get("out_channels") == 2 * unet.get("in_channels", 0):
            return "deepfloyd-if"
        return "stable-diffusion"
    return "deepfloyd-if" if re.match(r"deepfloyd/if-", name_or_path, re.IGNORECASE) else "stable-diffusion"


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}

__all__ = ["BACKBONES", "detect_backbone", "BackboneOptions", "DiffusionBackbone", "check_model_path",
           "DeepFloydIFBackbone", "StableDiffusionBackbone"]
