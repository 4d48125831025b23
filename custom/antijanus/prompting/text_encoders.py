"""Text embeddings as threestudio's prompt processors make them, for our processors' caches.

- Stable Diffusion: CLIP text encoder, tokens padded to ``tokenizer.model_max_length`` (77),
  last hidden state (threestudio's ``StableDiffusionPromptProcessor.spawn_func``).
- DeepFloyd IF: T5 encoder, 77 tokens with the attention mask, last hidden state
  (``DeepFloydPromptProcessor.spawn_func``). threestudio always loads T5 in 8 bit
  (bitsandbytes, CUDA only); here that is the ``load_in_8bit`` choice, resolved by
  ``resolve_load_in_8bit``: threestudio's 8 bit where it can work, full precision elsewhere.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch

# The encoding itself lives with the backbones (one implementation for both; prompting imports
# from backbones, never the reverse).
from ..backbones.text_encoding import (IF_MAX_TOKENS, MODEL_KEY, clip_text_embeddings,  # noqa: F401
                                       load_tokenizer, t5_text_embeddings)
from ..utils.errors import ConfigError


def eight_bit_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def resolve_load_in_8bit(setting: Optional[bool], key: str = "t5_load_in_8bit") -> bool:
    """None (auto): 8 bit as threestudio does where it can work (CUDA + bitsandbytes), else
    full precision. True where it cannot work is a configuration error."""
    if setting is None:
        return eight_bit_available()
    if setting and not eight_bit_available():
        raise ConfigError(key, setting, "8-bit T5 needs a CUDA GPU and the bitsandbytes package; "
                          "use false (full precision) or null (8 bit only where it can work)")
    return bool(setting)


def encoder_max_tokens(tokenizer, kind: str) -> int:
    return IF_MAX_TOKENS if kind == "t5" else int(tokenizer.model_max_length)


def token_counter(tokenizer):
    """Number of tokens of a text with the encoder's special tokens, untruncated."""
    return lambda text: len(tokenizer(text, add_special_tokens=True, verbose=False).input_ids)


def text_encoder_width(model: str) -> Optional[int]:
    """The width of the text encoder's embeddings (CLIP ``hidden_size``, T5 ``d_model``) from the
    model's ``text_encoder/config.json``; None when it cannot be read (then only the token count
    of a cached embedding is checked)."""
    from transformers import AutoConfig  # deferred: slow import

    try:
        config = AutoConfig.from_pretrained(model, subfolder="text_encoder")
    except Exception:  # noqa: BLE001 (no config.json, an id not in the hub cache: not checked)
        return None
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    return int(width) if isinstance(width, int) else None
