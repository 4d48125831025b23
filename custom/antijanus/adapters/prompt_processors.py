"""threestudio prompt-processor adapters: threestudio's Stable Diffusion prompt processor with
D-SDS prompt debiasing (``bert-pmi-prompt-processor``) or diffusion-negative prompting
(``dnp-prompt-processor``), over the pure-PyTorch prompt work in ``antijanus.prompting``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import threestudio
from threestudio.models.prompt_processors.base import DirectionConfig, hash_prompt
from threestudio.models.prompt_processors.stable_diffusion_prompt_processor import (
    StableDiffusionPromptProcessor,
)
from threestudio.utils.misc import barrier, get_rank

from ..core.views import VIEWS, ViewRanges, classify_views
from ..prompting.debias import DebiasResult, DebiasSettings, cached_debias
from ..utils.cache import save_tensor, write_json
from ..utils.errors import ConfigError
from .registry import register


# threestudio's direction order (its built-in Perp-Neg indexes side=0, front=1, back=2, overhead=3)
DIRECTION_ORDER = ("side", "front", "back", "overhead")
DEFAULT_VIEW_PHRASES = {"front": "front view", "side": "side view", "back": "back view", "overhead": "top view"}
DEFAULT_PMI_VIEW_WORDS = {"front": "front", "side": "side", "back": "back", "overhead": "top"}


def _load_prompt_library() -> Dict:
    """threestudio's prompt library (for `lib:` prompts), when run from a threestudio checkout."""
    if os.path.exists("load/prompt_library.json"):
        with open("load/prompt_library.json") as f:
            return json.load(f)
    return {}


def _view_condition(view: str, ranges: ViewRanges):
    index = VIEWS.index(view)
    return lambda elevation, azimuth, distance: classify_views(elevation, azimuth, ranges) == index


def _check_view_mapping(key: str, mapping: Dict[str, str]) -> Dict[str, str]:
    mapping = dict(mapping)
    unknown = sorted(set(mapping) - set(DIRECTION_ORDER))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", mapping[unknown[0]], "unknown view name", DIRECTION_ORDER)
    missing = [v for v in DIRECTION_ORDER if not str(mapping.get(v, "")).strip()]
    if missing:
        raise ConfigError(key, mapping, f"needs a non-empty entry for every view (missing {missing})",
                          DIRECTION_ORDER)
    return mapping


class _AntijanusPromptProcessorMixin:
    """What both antijanus prompt processors add to threestudio's SD processor: text embeddings
    written atomically, and the "" embedding in the output (``empty_text_embeddings``), which
    the guidances use as the unconditional when the negative prompt is a Perp-Neg negative."""

    @staticmethod
    def spawn_func(pretrained_model_name_or_path, prompts, cache_dir):
        """CLIP text embeddings as threestudio's processor makes them, written atomically."""
        import torch
        from transformers import AutoTokenizer, CLIPTextModel

        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(pretrained_model_name_or_path, subfolder="text_encoder")
        with torch.no_grad():
            tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
            embeddings = text_encoder(tokens.input_ids)[0]
        for prompt, embedding in zip(prompts, embeddings):
            save_tensor(os.path.join(cache_dir, f"{hash_prompt(pretrained_model_name_or_path, prompt)}.pt"),
                        embedding.clone())
        del text_encoder

    def load_empty_text_embeddings(self) -> None:
        path = os.path.join(self._cache_dir, f"{hash_prompt(self.cfg.pretrained_model_name_or_path, '')}.pt")
        if get_rank() == 0 and not os.path.exists(path):
            self.spawn_func(self.cfg.pretrained_model_name_or_path, [""], self._cache_dir)
        barrier()
        self.empty_text_embeddings = self.load_from_cache("")[None, ...]

    def __call__(self):
        output = super().__call__()
        output.empty_text_embeddings = self.empty_text_embeddings
        return output


@register("bert-pmi-prompt-processor")
class BertPMIPromptProcessor(_AntijanusPromptProcessorMixin, StableDiffusionPromptProcessor):
    """threestudio's Stable Diffusion prompt processor with D-SDS prompt debiasing: for each
    view, the words of the prompt that contradict it (BERT PMI, antijanus.debias) are removed
    before the view phrase is appended and the prompt embedded. Output: the usual
    PromptProcessorOutput, so any guidance (stock or antijanus) uses it."""

    @dataclass
    class Config(StableDiffusionPromptProcessor.Config):
        front_threshold: float = 22.5  # D-SDS Sec. 4.2: the front region is halved
        view_phrases: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_VIEW_PHRASES))
        debias_model: str = "bert-base-uncased"
        debias_threshold: float = 0.95
        debias_p_word: float = 0.5
        protected_words: List[str] = field(default_factory=list)
        protected_word_indices: List[int] = field(default_factory=list)
        pmi_view_words: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PMI_VIEW_WORDS))
        pmi_normalization: str = "mean"
        debias_template: str = "This image is depicting a [MASK] view of {prompt}"
        debias_cache_dir: str = ".threestudio_cache/prompt_debiasing"
        report_path: Optional[str] = None  # JSON with the PMI table and the per-view prompts

    cfg: Config

    def configure(self) -> None:
        cfg = self.cfg
        self._cache_dir = ".threestudio_cache/text_embeddings"
        ranges = ViewRanges(cfg.front_threshold, cfg.back_threshold, cfg.overhead_threshold).validate()
        phrases = _check_view_mapping("view_phrases", cfg.view_phrases)
        view_words = _check_view_mapping("pmi_view_words", cfg.pmi_view_words)
        self.directions = [
            DirectionConfig(name, (lambda s, p=phrases[name]: f"{s}, {p}"), (lambda s: s),
                            _view_condition(name, ranges))
            for name in DIRECTION_ORDER
        ]
        self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}
        self.prompt_library = _load_prompt_library()
        self.prompt = self.preprocess_prompt(cfg.prompt)
        if not self.prompt or not self.prompt.strip():
            raise ConfigError("prompt", cfg.prompt, "must not be empty")
        self.negative_prompt = cfg.negative_prompt
        self.settings = DebiasSettings(
            views=DIRECTION_ORDER, view_words=tuple(view_words[v] for v in DIRECTION_ORDER),
            threshold=float(cfg.debias_threshold), protected_words=tuple(cfg.protected_words),
            protected_word_indices=tuple(cfg.protected_word_indices), p_word=float(cfg.debias_p_word),
            normalization=cfg.pmi_normalization, template=cfg.debias_template,
        ).validate()
        self.debiased = self.debias()
        self.prompts_vd = [
            cfg.get(f"prompt_{d.name}", None) or d.prompt(self.debiased.view_prompts[d.name])
            for d in self.directions
        ]
        self.negative_prompts_vd = [d.negative_prompt(self.negative_prompt) for d in self.directions]
        threestudio.info("antijanus: debiased view prompts " + " ".join(
            f"[{d.name}]:[{p}]" for d, p in zip(self.directions, self.prompts_vd)))
        self.prepare_text_embeddings()
        self.load_text_embeddings()
        self.load_empty_text_embeddings()

    def debias(self) -> DebiasResult:
        """Computed on rank zero (cached, atomically written), shared through the cache file."""
        cfg = self.cfg

        def scorer():
            from ..prompting.mlm import MaskedLMViewScorer

            return MaskedLMViewScorer(cfg.debias_model, device="cpu", template=cfg.debias_template)

        def run(make_scorer, use_cache=True):
            return cached_debias(self.prompt, self.settings, cfg.debias_model, cfg.debias_cache_dir,
                                 make_scorer, use_cache=use_cache)

        def compute():
            result, path, hit = run(scorer, cfg.use_cache)
            threestudio.info(f"antijanus: prompt debiasing {'(cached) ' if hit else ''}{path}")
            if result.table is not None:
                threestudio.info("antijanus: PMI table (word x view)\n" + result.table.format())
            if cfg.report_path:
                write_json(cfg.report_path, {**result.as_dict(), "settings": {
                    "model": cfg.debias_model, "threshold": cfg.debias_threshold,
                    "normalization": cfg.pmi_normalization, "p_word": cfg.debias_p_word}})
            return result

        return _rank_zero_then_shared(compute, lambda: run(_no_model_on_other_ranks)[0])


def _rank_zero_then_shared(compute, read_cached):
    """Multi-GPU: rank 0 runs ``compute`` (which writes its cache file atomically); after a
    barrier the other ranks read the result from that cache with ``read_cached``."""
    result = compute() if get_rank() == 0 else None
    barrier()
    return result if get_rank() == 0 else read_cached()


def _no_model_on_other_ranks():
    raise RuntimeError("antijanus cache missing on a non-zero rank after the barrier")


@register("dnp-prompt-processor")
class DNPPromptProcessor(_AntijanusPromptProcessorMixin, StableDiffusionPromptProcessor):
    """threestudio's SD prompt processor with automatic diffusion-negative prompting: with
    ``negative_prompt: auto`` it samples the DNS image of the prompt once (rank 0, cached), captions
    it into n* and uses n* as the negative prompt (the unconditional embedding, and a Perp-Neg
    negative when the guidance has ``negative_prompt_weight > 0``). Any other negative_prompt
    is used as given (e.g. an n* written by hand after looking at the saved DNS image)."""

    @dataclass
    class Config(StableDiffusionPromptProcessor.Config):
        negative_prompt: str = "auto"
        dns_steps: int = 50
        dns_guidance_scale: float = 7.5
        dns_seed: int = 0
        dns_half_precision: bool = True
        captioner: str = "Salesforce/blip-image-captioning-base"
        caption_max_new_tokens: int = 30
        dnp_cache_dir: str = ".threestudio_cache/dnp"
        dnp_output_dir: Optional[str] = None  # copy of the DNS image and n* (JSON)

    cfg: Config

    def configure(self) -> None:
        from ..prompting.dnp import SamplingSettings

        cfg = self.cfg
        self.dnp = None
        if cfg.negative_prompt.strip().lower() == "auto":
            settings = SamplingSettings(cfg.dns_steps, cfg.dns_guidance_scale, cfg.dns_seed).validate()
            self.dnp = self.run_dnp(settings)
            cfg.negative_prompt = self.dnp.negative_prompt
            threestudio.info(f"antijanus: auto-DNP negative prompt n* = [{self.dnp.negative_prompt}] "
                             f"(DNS image {self.dnp.image_path})")
        super().configure()
        self.load_empty_text_embeddings()

    def run_dnp(self, settings):
        import shutil

        from ..prompting.captioning import BlipCaptioner
        from ..prompting.dnp import cached_dnp, load_sampler

        cfg = self.cfg
        self.prompt_library = _load_prompt_library()
        prompt = self.preprocess_prompt(cfg.prompt)
        device = self.device

        def sampler():
            return load_sampler(cfg.pretrained_model_name_or_path, device,
                                half_precision=cfg.dns_half_precision and device.type == "cuda")

        def captioner():
            return BlipCaptioner(cfg.captioner, device=device, max_new_tokens=cfg.caption_max_new_tokens)

        def run(make_sampler, make_captioner, use_cache=True):
            return cached_dnp(prompt, cfg.pretrained_model_name_or_path, settings, cfg.captioner,
                              cfg.dnp_cache_dir, make_sampler, make_captioner, use_cache=use_cache)

        def compute():
            result = run(sampler, captioner, cfg.use_cache)
            if cfg.dnp_output_dir:
                os.makedirs(cfg.dnp_output_dir, exist_ok=True)
                shutil.copyfile(result.image_path, os.path.join(cfg.dnp_output_dir, "dns-image.png"))
                write_json(os.path.join(cfg.dnp_output_dir, "dnp.json"),
                           {"prompt": prompt, "negative_prompt": result.negative_prompt,
                            "dns_image": result.image_path})
            return result

        return _rank_zero_then_shared(compute, lambda: run(_no_model_on_other_ranks, _no_model_on_other_ranks))
