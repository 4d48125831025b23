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
import os
from typing import List, Optional

import torch
from torch import Tensor

from ..utils.errors import ConfigError
from ..utils.loading import check_model_path, load_pretrained

IF_MAX_TOKENS = 77  # threestudio's DeepFloyd processor (and IF's pipeline) encode 77 tokens
MODEL_KEY = "pretrained_model_name_or_path"


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


def load_tokenizer(model: str, key: str = MODEL_KEY):
    from transformers import AutoTokenizer

    check_model_path(key, model)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return load_pretrained(key, model, "text-to-image model with a tokenizer/ folder",
                           lambda: AutoTokenizer.from_pretrained(model, subfolder="tokenizer"))


def encoder_max_tokens(tokenizer, kind: str) -> int:
    return IF_MAX_TOKENS if kind == "t5" else int(tokenizer.model_max_length)


def token_counter(tokenizer):
    """Number of tokens of a text with the encoder's special tokens, untruncated."""
    return lambda text: len(tokenizer(text, add_special_tokens=True, verbose=False).input_ids)


@torch.no_grad()
def clip_text_embeddings(model: str, prompts: List[str]) -> Tensor:
    from transformers import CLIPTextModel

    tokenizer = load_tokenizer(model)
    encoder = load_pretrained(MODEL_KEY, model, "Stable Diffusion model with a CLIP text_encoder/",
                              lambda: CLIPTextModel.from_pretrained(model, subfolder="text_encoder"))
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    return encoder(tokens.input_ids)[0]


@torch.no_grad()
def t5_text_embeddings(model: str, prompts: List[str], load_in_8bit: bool = False) -> Tensor:
    from transformers import T5EncoderModel

    tokenizer = load_tokenizer(model)
    cuda = torch.cuda.is_available()
    what = "DeepFloyd IF model with a T5 text_encoder/"
    if load_in_8bit:  # threestudio's call
        encoder = load_pretrained(MODEL_KEY, model, what, lambda: T5EncoderModel.from_pretrained(
            model, subfolder="text_encoder", torch_dtype=torch.float16, load_in_8bit=True,
            variant="8bit", device_map="auto"))
    else:
        dtype = torch.float16 if cuda else torch.float32

        def load(variant):
            return T5EncoderModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype,
                                                  variant=variant)

        try:  # the hub checkpoint's fp16 variant is a quarter of its fp32 weights
            encoder = load("fp16")
        except (OSError, ValueError):
            encoder = load_pretrained(MODEL_KEY, model, what, lambda: load(None))
        encoder = encoder.to("cuda" if cuda else "cpu")
    device = next(encoder.parameters()).device
    tokens = tokenizer(prompts, padding="max_length", max_length=IF_MAX_TOKENS, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    return encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
