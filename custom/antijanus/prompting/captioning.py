"""Image captioning for diffusion-negative prompting: a transformers BLIP implementation, and
captioner plugins.

``BlipCaptioner`` loads ``BlipProcessor`` + ``BlipForConditionalGeneration`` with
``from_pretrained`` from a hub id (default ``Salesforce/blip-image-captioning-base``) or a local
folder, and captions images given as tensors [B, 3, H, W] in [0, 1]. ``check_captioner`` checks
the key cheaply (the model's config only) before anything else runs.

A **captioner plugin** is a folder holding ``antijanus_captioner.json``::

    {"class": "some.module:SomeCaptioner", "options": {"judge": "../judge"}}

``load_captioner`` then imports the class (importlib; the module must be importable) and builds
``SomeCaptioner(folder, device=..., max_new_tokens=..., key=..., **options)``; it must have
``caption(images, progress=False) -> List[str]`` (``dnp.Captioner``). ``check_captioner`` imports
it and calls its optional ``check(folder, key=..., **options)`` classmethod, before anything is
sampled. Any other folder or hub id is a BLIP captioner. (The Janus lab's captioner is one:
``custom/janus_lab/models/captioner``; this module never imports the lab.)
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from transformers import AutoConfig, BlipForConditionalGeneration, BlipProcessor

from ..utils.errors import ConfigError
from ..utils.imaging import to_pil
from ..utils.loading import check_model_path, is_local_folder, load_pretrained, require_layout
from ..utils.progress import progress_bar

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
WHAT = "BLIP image-captioning model (e.g. Salesforce/blip-image-captioning-base)"
BLIP_LAYOUT = ("config.json",)  # (the processor file is named differently across transformers versions)
PLUGIN_MARKER = "antijanus_captioner.json"  # a folder with this file names its captioner class


def captioner_plugin(name_or_path: str, key: str = "captioner") -> Optional[Tuple[type, Dict[str, Any]]]:
    """The class and options named by a plugin folder's marker, or None for anything else."""
    if not name_or_path or not is_local_folder(name_or_path):
        return None
    marker = os.path.join(os.path.expanduser(name_or_path), PLUGIN_MARKER)
    if not os.path.isfile(marker):
        return None
    try:
        with open(marker, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError(key, name_or_path, f"{PLUGIN_MARKER} cannot be read: {error}") from error
    target, options = (spec.get("class"), spec.get("options", {})) if isinstance(spec, dict) else (None, None)
    if not isinstance(target, str) or not target.strip() or not isinstance(options, dict):
        raise ConfigError(key, name_or_path, f'{PLUGIN_MARKER} must hold {{"class": "module:Class", '
                          f'"options": {{...}}}}; it holds {spec!r}')
    module_name, _, attribute = target.partition(":") if ":" in target else target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(key, name_or_path, f"{PLUGIN_MARKER} names the captioner class {target!r}, "
                          f"which cannot be imported: {error}") from error
    if not callable(getattr(cls, "caption", None)):
        raise ConfigError(key, name_or_path, f"{target} has no caption(images, progress) method")
    return cls, options


def require_caption_length(max_new_tokens: int, key: str = "caption_max_new_tokens") -> None:
    """The caption length limit: a positive number of new tokens (the one check of it)."""
    if max_new_tokens < 1:
        raise ConfigError(key, max_new_tokens, "must be >= 1")


def load_captioner(name_or_path: str = DEFAULT_CAPTIONER, device="cpu", max_new_tokens: int = 30,
                   key: str = "captioner"):
    """The captioner of a plugin folder, else a BlipCaptioner."""
    plugin = captioner_plugin(name_or_path, key)
    if plugin is None:
        return BlipCaptioner(name_or_path, device=device, max_new_tokens=max_new_tokens, key=key)
    require_caption_length(max_new_tokens)
    cls, options = plugin
    return cls(os.path.expanduser(name_or_path), device=device, max_new_tokens=max_new_tokens, key=key, **options)


def check_captioner(name_or_path: str, key: str = "captioner", max_new_tokens: int = 30,
                    tokens_key: str = "caption_max_new_tokens") -> None:
    """A configuration error now, before DNS sampling, when ``name_or_path`` cannot be a BLIP
    captioner (a missing folder, a folder of another kind, a hub id that cannot be reached) or a
    captioner plugin (its marker, class and own check), or the caption length limit is not a
    positive number of tokens."""
    require_caption_length(max_new_tokens, tokens_key)
    check_model_path(key, name_or_path)
    plugin = captioner_plugin(name_or_path, key)
    if plugin is not None:
        cls, options = plugin
        if callable(getattr(cls, "check", None)):
            cls.check(os.path.expanduser(name_or_path), key=key, **options)
        return
    require_layout(key, name_or_path, "BLIP captioning", BLIP_LAYOUT)
    if is_local_folder(name_or_path):
        with open(os.path.join(os.path.expanduser(name_or_path), "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    else:

        model_type = load_pretrained(key, name_or_path, WHAT,
                                     lambda: AutoConfig.from_pretrained(name_or_path)).model_type
    if model_type != "blip":
        raise ConfigError(key, name_or_path, f"is a {model_type!r} model, not a BLIP captioning model")


class BlipCaptioner:
    def __init__(self, name_or_path: str = DEFAULT_CAPTIONER, device="cpu", max_new_tokens: int = 30,
                 text_prompt: Optional[str] = None, key: str = "captioner") -> None:

        check_captioner(name_or_path, key, max_new_tokens)
        self.processor = load_pretrained(key, name_or_path, WHAT, lambda: BlipProcessor.from_pretrained(name_or_path))
        model = load_pretrained(key, name_or_path, WHAT,
                                lambda: BlipForConditionalGeneration.from_pretrained(name_or_path))
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.text_prompt = text_prompt

    @torch.no_grad()
    def caption(self, images: Tensor, progress: bool = False) -> List[str]:
        """One caption per image, generated image by image (the progress bar advances as
        each caption is done)."""
        bar = progress_bar(len(images), "captioning", unit="image", enabled=progress)
        captions = []
        for image in images:
            captions.append(self.caption_one(image))
            bar.update(1)
        bar.close()
        return captions

    @torch.no_grad()
    def caption_one(self, image: Tensor) -> str:
        kwargs = {"text": self.text_prompt} if self.text_prompt else {}
        inputs = self.processor(images=to_pil(image), return_tensors="pt", **kwargs).to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return self.processor.decode(out[0], skip_special_tokens=True).strip()
