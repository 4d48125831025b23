"""Image captioning for diffusion-negative prompting: a transformers BLIP implementation.

``BlipCaptioner`` loads ``BlipProcessor`` + ``BlipForConditionalGeneration`` with
``from_pretrained`` from a hub id (default ``Salesforce/blip-image-captioning-base``) or a local
folder, and captions images given as tensors [B, 3, H, W] in [0, 1].
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..utils.loading import check_model_path
from ..utils.errors import ConfigError

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"


class BlipCaptioner:
    def __init__(self, name_or_path: str = DEFAULT_CAPTIONER, device="cpu", max_new_tokens: int = 30,
                 text_prompt: Optional[str] = None, key: str = "captioner") -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        check_model_path(key, name_or_path)
        if max_new_tokens < 1:
            raise ConfigError("caption_max_new_tokens", max_new_tokens, "must be >= 1")
        self.processor = BlipProcessor.from_pretrained(name_or_path)
        self.model = BlipForConditionalGeneration.from_pretrained(name_or_path).to(device).eval()
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.text_prompt = text_prompt

    @torch.no_grad()
    def caption(self, images: Tensor) -> List[str]:
        from ..utils.imaging import to_pil

        pil = [to_pil(image) for image in images]
        kwargs = {"text": [self.text_prompt] * len(pil)} if self.text_prompt else {}
        inputs = self.processor(images=pil, return_tensors="pt", **kwargs).to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return [self.processor.decode(ids, skip_special_tokens=True).strip() for ids in out]
