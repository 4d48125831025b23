"""Prompt-processor outputs for the lab's 3D fast path, built without threestudio.

The guidance (``core.guidance``) reads a threestudio ``PromptProcessorOutput`` by duck typing
(``core.prompts``). ``build_prompt_output`` makes an equivalent object from a config's
``system.prompt_processor`` block, following the logic of the three processors the shipped
configs use:

* ``stable-diffusion-prompt-processor`` (threestudio's stock one): directions side (always),
  front (|azimuth| < front_threshold), back (|azimuth| > 180 - back_threshold), overhead
  (elevation > overhead_threshold), later ones winning; view prompts ``"<prompt>, <view> view"``
  with threestudio's phrases (``overhead view``); the negative prompt (default "") as the
  unconditional embedding of every direction.
* ``bert-pmi-prompt-processor``: the same directions with the D-SDS defaults (front +-22.5,
  ``top view``), and, with ``use_prompt_debiasing`` (default true), each view's user part
  debiased by ``prompting.debias`` with the given masked LM (the authors' rule by default).
* ``dnp-prompt-processor``: the stock directions; ``negative_prompt: auto`` samples the DNS
  image with the prior and captions it (``prompting.dnp.cached_dnp``) into n*, the negative
  prompt, i.e. the unconditional of CFG(p, n*).

Text embeddings are the prior's CLIP embeddings as threestudio's SD processor makes them
(``backbones.stable_diffusion.encode_prompts``: padded to 77 tokens, last hidden state). Every
output also carries the "" embedding (``empty_text_embeddings``), as our processors do. View
prompts longer than the text encoder's window are refused (the lab's prompts are short).
The defaults below are those of the processors' Config classes; a threestudio-tier test checks
them, and the outputs, against the real processors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from antijanus.core.views import ViewRanges, shift_azimuth
from antijanus.prompting.debias import DebiasSettings, cached_debias, debias_prompt
from antijanus.utils.errors import ConfigError

# threestudio's direction order (its built-in Perp-Neg indexes side=0, front=1, back=2, overhead=3)
DIRECTION_ORDER: Tuple[str, ...] = ("side", "front", "back", "overhead")
STOCK_PHRASES = {"side": "side view", "front": "front view", "back": "back view", "overhead": "overhead view"}
DSDS_PHRASES = {"side": "side view", "front": "front view", "back": "back view", "overhead": "top view"}
# threestudio's PromptProcessor.Config: Perp-Neg weight functions (a, b, c) of a exp(-b r) + c
STOCK_PERP_NEG = {"perp_neg_f_sb": (1.0, 0.5, -0.606), "perp_neg_f_fsb": (1.0, 0.5, 0.967),
                  "perp_neg_f_fs": (4.0, 0.5, -2.426), "perp_neg_f_sf": (4.0, 0.5, -2.426)}

PROCESSORS = ("stable-diffusion-prompt-processor", "bert-pmi-prompt-processor", "dnp-prompt-processor")

# Defaults of each processor's Config (threestudio's PromptProcessor, our DebiasingKeys and
# DNPPromptProcessor.Config) for the keys used here.
STOCK_DEFAULTS: Dict[str, Any] = {
    "negative_prompt": "", "front_threshold": 45.0, "back_threshold": 45.0, "overhead_threshold": 60.0,
    "use_perp_neg": False, **STOCK_PERP_NEG,
}
DEBIAS_DEFAULTS: Dict[str, Any] = {
    **STOCK_DEFAULTS, "front_threshold": 22.5, "view_phrases": DSDS_PHRASES, "use_prompt_debiasing": True,
    "debias_model": None, "pretrained_model_name_or_path_prompt_debiasing": "bert-base-uncased",
    "debias_threshold": 0.95, "debias_p_word": 0.5, "protected_words": [], "protected_word_indices": [],
    "prompt_debiasing_mask_ids": None, "pmi_view_words": {v: v for v in DIRECTION_ORDER},
    "pmi_normalization": "none", "debias_word_units": "whitespace",
    "debias_template": "This image is depicting a [MASK] view of {prompt}",
}
DNP_DEFAULTS: Dict[str, Any] = {
    **STOCK_DEFAULTS, "negative_prompt": "auto", "dns_steps": 50, "dns_guidance_scale": 7.5, "dns_seed": 0,
    "captioner": "Salesforce/blip-image-captioning-base", "caption_max_new_tokens": 30,
}
DEFAULTS = {"stable-diffusion-prompt-processor": STOCK_DEFAULTS, "bert-pmi-prompt-processor": DEBIAS_DEFAULTS,
            "dnp-prompt-processor": DNP_DEFAULTS}


@dataclass(frozen=True)
class ViewCondition:
    """threestudio's condition of one direction (picklable, unlike its lambdas). The processors
    apply the conditions in DIRECTION_ORDER, later ones winning (``core.prompts.direction_indices``)."""

    view: str
    ranges: ViewRanges

    def __call__(self, elevation: Tensor, azimuth: Tensor, camera_distances: Tensor) -> Tensor:
        a = shift_azimuth(azimuth).abs()
        if self.view == "front":
            return a < self.ranges.front_half_width
        if self.view == "back":
            return a > 180.0 - self.ranges.back_half_width
        if self.view == "overhead":
            return elevation > self.ranges.overhead_elevation
        return torch.ones_like(elevation, dtype=torch.bool)  # side: always (the default direction)


@dataclass(frozen=True)
class Direction:
    name: str
    phrase: str
    condition: ViewCondition

    def prompt(self, text: str) -> str:
        return f"{text}, {self.phrase}"


@dataclass
class LabPromptOutput:
    """The attributes of threestudio's ``PromptProcessorOutput`` the guidance reads, plus the ""
    embedding and a record of how the prompts were made."""

    text_embeddings: Tensor  # [1, 77, F]
    uncond_text_embeddings: Tensor  # [1, 77, F]
    text_embeddings_vd: Tensor  # [4, 77, F], DIRECTION_ORDER
    uncond_text_embeddings_vd: Tensor  # [4, 77, F]
    directions: List[Direction]
    direction2idx: Dict[str, int]
    use_perp_neg: bool
    perp_neg_f_sb: Tuple[float, ...]
    perp_neg_f_fsb: Tuple[float, ...]
    perp_neg_f_fs: Tuple[float, ...]
    perp_neg_f_sf: Tuple[float, ...]
    prompt: str
    prompts_vd: List[str]
    negative_prompt: str
    empty_text_embeddings: Tensor  # [1, 77, F]
    record: Dict[str, Any] = field(default_factory=dict)  # debiasing / DNP details

    def summary(self) -> Dict[str, Any]:
        return {"prompt": self.prompt, "prompts_vd": dict(zip(DIRECTION_ORDER, self.prompts_vd)),
                "negative_prompt": self.negative_prompt, "use_perp_neg": self.use_perp_neg, **self.record}


def processor_settings(kind: str, block: Optional[Mapping]) -> Dict[str, Any]:
    """The processor block over the processor's defaults (dict keys merged like our processors'
    ``view_phrases`` / ``pmi_view_words``). Unknown processors are an error."""
    if kind not in DEFAULTS:
        raise ConfigError("prompt_processor_type", kind, "has no lab equivalent", PROCESSORS)
    merged = dict(DEFAULTS[kind])
    for key, value in dict(block or {}).items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    if kind == "bert-pmi-prompt-processor" and merged.get("view_dependent_prompt_front"):
        raise ConfigError("view_dependent_prompt_front", True, "is not supported by bert-pmi-prompt-processor")
    return merged


def directions_of(settings: Mapping[str, Any], phrases: Mapping[str, str]) -> List[Direction]:
    ranges = ViewRanges(float(settings["front_threshold"]), float(settings["back_threshold"]),
                        float(settings["overhead_threshold"])).validate()
    return [Direction(v, phrases[v], ViewCondition(v, ranges)) for v in DIRECTION_ORDER]


class PromptEncoder:
    """The prior's CLIP text embeddings (threestudio's SD processor), memoised per text."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self._cache: Dict[str, Tensor] = {}
        self._tokenizer = None

    def token_count(self, text: str) -> Tuple[int, int]:
        """The text's tokens and the text encoder's window."""
        if self._tokenizer is None:
            # imported on first use: importing transformers reads HF_HUB_OFFLINE, which
            # custom/janus_lab/scripts/lab_sweep.py sets after importing the lab (and it takes seconds)
            from transformers import AutoTokenizer  # deferred: see the comment above

            self._tokenizer = AutoTokenizer.from_pretrained(self.backbone.model_path, subfolder="tokenizer")
        return len(self._tokenizer(text, add_special_tokens=True, verbose=False).input_ids), \
            int(self._tokenizer.model_max_length)

    def __call__(self, texts: Sequence[str]) -> Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for text in missing:
                count, limit = self.token_count(text)
                if count > limit:
                    raise ConfigError("prompt_processor.prompt", text, f"is {count} tokens, more than the "
                                      f"text encoder's {limit} (the lab refuses long prompts)")
            embeddings = self.backbone.encode_prompts(list(missing), keep_encoder=True)
            for text, embedding in zip(missing, embeddings):
                self._cache[text] = embedding.detach().float().cpu()
        return torch.stack([self._cache[t] for t in texts])


def debiased_user_parts(prompt: str, settings: Mapping[str, Any], make_scorer: Callable[[str], Any],
                        cache_dir: Optional[str]) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """Each view's user part after D-SDS prompt debiasing (``prompting.debias``), as
    ``bert-pmi-prompt-processor`` computes it, and a record (removed words)."""
    model = settings["debias_model"] or settings["pretrained_model_name_or_path_prompt_debiasing"]
    words = {**{v: v for v in DIRECTION_ORDER}, **dict(settings["pmi_view_words"])}
    mask_ids = settings["prompt_debiasing_mask_ids"]
    debias = DebiasSettings(
        views=DIRECTION_ORDER, view_words=tuple(words[v] for v in DIRECTION_ORDER),
        threshold=float(settings["debias_threshold"]), protected_words=tuple(settings["protected_words"]),
        protected_word_indices=tuple(settings["protected_word_indices"]),
        removable_word_indices=None if mask_ids is None else tuple(mask_ids),
        p_word=float(settings["debias_p_word"]), normalization=settings["pmi_normalization"],
        word_units=settings["debias_word_units"], template=settings["debias_template"],
    ).validate()
    if cache_dir:
        result, _, _ = cached_debias(prompt, debias, model, cache_dir, lambda: make_scorer(model))
    else:
        result = debias_prompt(prompt, debias, make_scorer(model))
    return dict(result.view_prompts), {"debias_model": model, "removed": result.removed,
                                       "kept_whole": result.kept_whole}


def build_prompt_output(kind: str, block: Optional[Mapping], prompt: str, encode: PromptEncoder,
                        make_scorer: Optional[Callable[[str], Any]] = None,
                        auto_negative: Optional[Callable[[str, Mapping[str, Any]], Tuple[str, Dict]]] = None,
                        debias_cache_dir: Optional[str] = None) -> LabPromptOutput:
    """The output the processor ``kind`` configured by ``block`` would give for ``prompt``.

    ``make_scorer(model)``: the masked-LM view scorer (bert-pmi); ``auto_negative(prompt,
    settings)``: n* and a record for ``negative_prompt: auto`` (dnp)."""
    settings = processor_settings(kind, block)
    prompt = str(prompt)
    if not prompt.strip():
        raise ConfigError("prompt_processor.prompt", prompt, "must not be empty")
    phrases = ({**DSDS_PHRASES, **dict(settings["view_phrases"])} if kind == "bert-pmi-prompt-processor"
               else STOCK_PHRASES)
    directions = directions_of(settings, phrases)
    parts = {v: prompt for v in DIRECTION_ORDER}
    record: Dict[str, Any] = {"processor": kind}
    if kind == "bert-pmi-prompt-processor" and settings["use_prompt_debiasing"]:
        if make_scorer is None:
            raise ConfigError("debias_model", settings["debias_model"], "prompt debiasing needs a masked LM")
        parts, record["debiasing"] = debiased_user_parts(prompt, settings, make_scorer, debias_cache_dir)
    negative = str(settings["negative_prompt"])
    if kind == "dnp-prompt-processor" and negative.strip().lower() == "auto":
        if auto_negative is None:
            raise ConfigError("captioner", settings["captioner"], "negative_prompt: auto needs a captioner")
        negative, record["dnp"] = auto_negative(prompt, settings)
    prompts_vd = [d.prompt(parts[d.name]) for d in directions]
    embeddings = encode([prompt, negative, ""] + prompts_vd)
    text, uncond, empty, vd = embeddings[:1], embeddings[1:2], embeddings[2:3], embeddings[3:]
    return LabPromptOutput(
        text_embeddings=text, uncond_text_embeddings=uncond, text_embeddings_vd=vd,
        uncond_text_embeddings_vd=uncond.expand(len(directions), -1, -1).clone(),
        directions=directions, direction2idx={d.name: i for i, d in enumerate(directions)},
        use_perp_neg=bool(settings["use_perp_neg"]),
        **{k: tuple(float(x) for x in settings[k]) for k in STOCK_PERP_NEG},
        prompt=prompt, prompts_vd=prompts_vd, negative_prompt=negative, empty_text_embeddings=empty,
        record=record,
    )
