"""Text embeddings exactly as threestudio's prompt processors make them: the one implementation,
used by the backbones (``encode_prompts``) and by our prompt processors
(``antijanus.prompting.text_encoders`` re-exports it).

- Stable Diffusion: CLIP text encoder, tokens padded to ``tokenizer.model_max_length`` (77),
  last hidden state (threestudio's ``StableDiffusionPromptProcessor.spawn_func``).
- DeepFloyd IF: T5 encoder, 77 tokens with the attention mask, last hidden state
  (``DeepFloydPromptProcessor.spawn_func``); threestudio loads T5 in 8 bit (bitsandbytes, CUDA
  only), here ``load_in_8bit`` chooses.
"""

from __future__ import annotations

import os
from typing import List, Optional, Union

import torch
from torch import Tensor

from ..utils.loading import check_model_path, load_pretrained

IF_MAX_TOKENS = 77  # threestudio's DeepFloyd processor (and IF's pipeline) encode 77 tokens
MODEL_KEY = "pretrained_model_name_or_path"

Device = Union[str, torch.device]


def load_tokenizer(model: str, key: str = MODEL_KEY):
    """The model folder's ``tokenizer/`` (CLIP or T5)."""
    from transformers import AutoTokenizer  # deferred: slow import

    check_model_path(key, model)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return load_pretrained(key, model, "text-to-image model with a tokenizer/ folder",
                           lambda: AutoTokenizer.from_pretrained(model, subfolder="tokenizer"))


def load_clip_text_encoder(model: str, key: str = MODEL_KEY):
    """Stable Diffusion's CLIP ``text_encoder/`` (fp32, as threestudio's processor), in eval mode."""
    from transformers import CLIPTextModel  # deferred: slow import

    return load_pretrained(key, model, "Stable Diffusion model with a CLIP text_encoder/",
                           lambda: CLIPTextModel.from_pretrained(model, subfolder="text_encoder")).eval()


def load_t5_encoder(model: str, dtype: torch.dtype, device: Optional[Device] = None,
                    load_in_8bit: bool = False, key: str = MODEL_KEY):
    """DeepFloyd IF's T5 ``text_encoder/``: threestudio's 8-bit call when ``load_in_8bit``, else
    the ``fp16`` variant when the folder has it (a quarter of the fp32 weights), else the plain
    weights, in ``dtype`` on ``device``."""
    from transformers import T5EncoderModel  # deferred: slow import

    what = "DeepFloyd IF model with a T5 text_encoder/"
    if load_in_8bit:  # threestudio's call
        return load_pretrained(key, model, what, lambda: T5EncoderModel.from_pretrained(
            model, subfolder="text_encoder", torch_dtype=torch.float16, load_in_8bit=True,
            variant="8bit", device_map="auto"))

    def load(variant):
        return T5EncoderModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype,
                                              variant=variant)

    try:
        encoder = load("fp16")
    except (OSError, ValueError):
        encoder = load_pretrained(key, model, what, lambda: load(None))
    return encoder.to(device) if device is not None else encoder


def _device_of(encoder) -> torch.device:
    return next(encoder.parameters()).device


@torch.no_grad()
def clip_embeddings(tokenizer, encoder, prompts: List[str]) -> Tensor:
    """threestudio's CLIP encoding: pad/truncate to model_max_length, last hidden state."""
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    return encoder(tokens.input_ids.to(_device_of(encoder)))[0]


@torch.no_grad()
def t5_embeddings(tokenizer, encoder, prompts: List[str]) -> Tensor:
    """threestudio's T5 encoding: 77 tokens with the attention mask, last hidden state."""
    tokens = tokenizer(prompts, padding="max_length", max_length=IF_MAX_TOKENS, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    device = _device_of(encoder)
    return encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]


def clip_text_embeddings(model: str, prompts: List[str]) -> Tensor:
    """CLIP embeddings of ``prompts`` with the model's tokenizer and text encoder (on the CPU)."""
    tokenizer = load_tokenizer(model)
    return clip_embeddings(tokenizer, load_clip_text_encoder(model), prompts)


def t5_text_embeddings(model: str, prompts: List[str], load_in_8bit: bool = False) -> Tensor:
    """T5 embeddings of ``prompts``: fp16 on a GPU, fp32 on a CPU, or threestudio's 8 bit."""
    tokenizer = load_tokenizer(model)
    cuda = torch.cuda.is_available()
    encoder = load_t5_encoder(model, torch.float16 if cuda else torch.float32,
                              None if load_in_8bit else ("cuda" if cuda else "cpu"), load_in_8bit)
    return t5_embeddings(tokenizer, encoder, prompts)
