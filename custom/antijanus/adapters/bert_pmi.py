"""D-SDS prompt debiasing (BERT PMI) as threestudio prompt processors, for Stable Diffusion
(``bert-pmi-prompt-processor``, CLIP) and DeepFloyd IF (``bert-pmi-deep-floyd-prompt-processor``,
T5): one mixin, two text encoders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import threestudio
from threestudio.models.prompt_processors.base import DirectionConfig, PromptProcessor
from threestudio.models.prompt_processors.stable_diffusion_prompt_processor import StableDiffusionPromptProcessor

from ..core.views import ViewRanges
from ..prompting.debias import (DEFAULT_TEMPLATE, DEFAULT_VIEWS, DebiasResult, DebiasSettings, cached_debias,
                                threshold_problem)
from ..prompting import mlm
from ..prompting.text_encoders import resolve_load_in_8bit
from ..prompting.view_prompts import comma_phrase
from ..utils.cache import write_json
from ..utils.errors import ConfigError
from .prompt_base import (DIRECTION_ORDER, AntijanusPromptProcessorMixin, expand_trial_dir, keys_changed_from_defaults,
                          load_prompt_library, merged_view_mapping, no_model_on_other_ranks, rank_zero_then_shared,
                          t5_spawn_func, view_condition)
from .registry import register

# D-SDS Sec. 4.2: "front view", "side view", "back view", "top view", appended without "of"
DEFAULT_VIEW_PHRASES = {"front": "front view", "side": "side view", "back": "back view", "overhead": "top view"}
# threestudio's get_debiased_prompt scores the direction names themselves
DEFAULT_PMI_VIEW_WORDS = dict(zip(DEFAULT_VIEWS, DEFAULT_VIEWS))


@dataclass
class DebiasingKeys:
    """The keys both debiasing processors add to threestudio's prompt-processor keys."""
    prompt: Optional[str] = "a hamburger"  # threestudio's; Optional: `prompt=` (None) is our ConfigError
    use_prompt_debiasing: bool = True  # threestudio's key; false: view phrases only, no BERT
    front_threshold: float = 22.5  # D-SDS Sec. 4.2: the front region is halved
    view_phrases: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_VIEW_PHRASES))
    debias_model: Optional[str] = None  # null: threestudio's pretrained_model_name_or_path_prompt_debiasing
    debias_threshold: float = 0.95
    debias_p_word: float = 0.5
    protected_words: List[str] = field(default_factory=list)
    protected_word_indices: List[int] = field(default_factory=list)
    pmi_view_words: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PMI_VIEW_WORDS))
    pmi_normalization: str = "none"  # threestudio's rule; "mean" / "max": normalised options
    debias_word_units: str = "whitespace"  # threestudio's prompt.split(" "); "words": punctuation apart
    debias_template: str = DEFAULT_TEMPLATE
    debias_cache_dir: str = ".threestudio_cache/prompt_debiasing"
    report_path: Optional[str] = None  # JSON with the PMI table and the view prompts; may use {trial_dir}


# threestudio's prompt-processor keys of the view regions (``ViewRanges`` names them by their meaning)
RANGE_KEYS = {"front_half_width": "front_threshold", "back_half_width": "back_threshold",
              "overhead_elevation": "overhead_threshold"}

# keys that only matter when debiasing runs
_DEBIAS_ONLY = ("debias_model", "debias_threshold", "debias_p_word", "protected_words", "protected_word_indices",
                "pmi_view_words", "pmi_normalization", "debias_word_units", "debias_template", "report_path",
                "prompt_debiasing_mask_ids")


class DebiasingPromptProcessorMixin(AntijanusPromptProcessorMixin):
    """Per view, the words of the prompt that contradict it (BERT PMI, antijanus.prompting.debias)
    are removed before the view phrase is appended and the prompt embedded. Output: the usual
    PromptProcessorOutput (plus the "" embedding), so any guidance, stock or antijanus, uses it."""
    def configure(self) -> None:
        cfg = self.cfg
        self._cache_dir = ".threestudio_cache/text_embeddings"
        if cfg.view_dependent_prompt_front:
            raise ConfigError("view_dependent_prompt_front", True, "is not supported by this processor; "
                              "write the view phrases with `view_phrases` (appended as '<prompt>, <phrase>')")
        ranges = ViewRanges(cfg.front_threshold, cfg.back_threshold, cfg.overhead_threshold).validate(keys=RANGE_KEYS)
        phrases = merged_view_mapping("view_phrases", cfg.view_phrases, DEFAULT_VIEW_PHRASES)
        self.directions = [DirectionConfig(name, comma_phrase(phrases[name]), lambda s: s,
                                           view_condition(name, ranges)) for name in DIRECTION_ORDER]
        self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}
        self.prompt_library = load_prompt_library()
        self.prompt = self.require_prompt(self.preprocess_prompt(self.require_prompt(cfg.prompt)))
        self.check_prompt_subject(self.prompt, list(phrases.values()))
        self.negative_prompt = cfg.negative_prompt
        self.configure_text_encoder_choice()
        self.check_view_phrases_fit()  # configuration errors before any model loads
        self.settings = self.debias_settings()
        self.debiased: Optional[DebiasResult] = None
        if cfg.use_prompt_debiasing:
            self.warn_unreachable_threshold()
            self.debiased = self.debias()
        else:
            self.warn_unused_debias_keys()
        self.view_user_parts = [self.debiased.view_prompts[d.name] if self.debiased else self.prompt
                                for d in self.directions]
        self.prompts_vd = [cfg.get(f"prompt_{d.name}", None) or d.prompt(part)
                           for d, part in zip(self.directions, self.view_user_parts)]
        self.negative_prompts_vd = [d.negative_prompt(self.negative_prompt) for d in self.directions]
        self.prepare_text_embeddings()  # fits long prompts to the text encoder first
        threestudio.info(f"antijanus: {'debiased ' if self.debiased else ''}view prompts " + " ".join(
            f"[{d.name}]:[{p}]" for d, p in zip(self.directions, self.prompts_vd)))
        self.load_text_embeddings()
        self.load_empty_text_embeddings()

    def configure_text_encoder_choice(self) -> None:
        """Text-encoder options, checked before any model loads (IF: 8 bit or not)."""
    @property
    def debias_model(self) -> str:
        return self.cfg.debias_model or self.cfg.pretrained_model_name_or_path_prompt_debiasing

    def debias_settings(self) -> DebiasSettings:
        cfg = self.cfg
        view_words = merged_view_mapping("pmi_view_words", cfg.pmi_view_words, DEFAULT_PMI_VIEW_WORDS)
        mask_ids = cfg.prompt_debiasing_mask_ids
        return DebiasSettings(
            views=DIRECTION_ORDER, view_words=tuple(view_words[v] for v in DIRECTION_ORDER),
            threshold=float(cfg.debias_threshold), protected_words=tuple(cfg.protected_words),
            protected_word_indices=tuple(cfg.protected_word_indices),
            removable_word_indices=None if mask_ids is None else tuple(mask_ids),
            p_word=float(cfg.debias_p_word), normalization=cfg.pmi_normalization,
            word_units=cfg.debias_word_units, template=cfg.debias_template,
        ).validate()

    def warn_unreachable_threshold(self) -> None:
        problem = threshold_problem(self.settings)
        if problem:
            threestudio.warn(f"antijanus: `system.prompt_processor.debias_threshold` = {self.settings.threshold:g}: "
                             f"{problem}")

    def warn_unused_debias_keys(self) -> None:
        changed = keys_changed_from_defaults(self.cfg, self.Config, _DEBIAS_ONLY)
        if changed:
            threestudio.warn(f"antijanus: use_prompt_debiasing is false, so {changed} have no effect")

    def debias(self) -> DebiasResult:
        """Computed on rank zero (cached, atomically written), shared through the cache file."""
        cfg, model = self.cfg, self.debias_model

        def scorer():
            threestudio.info(f"antijanus: prompt debiasing: scoring [{self.prompt}] with the masked LM {model}")
            key = "debias_model" if cfg.debias_model else "pretrained_model_name_or_path_prompt_debiasing"
            return mlm.MaskedLMViewScorer(model, device="cpu", template=cfg.debias_template, key=key)

        def run(make_scorer, use_cache=True):
            return cached_debias(self.prompt, self.settings, model, cfg.debias_cache_dir, make_scorer,
                                 use_cache=use_cache)

        def compute():
            result, path, hit = run(scorer, cfg.use_cache)
            threestudio.info(f"antijanus: prompt debiasing {'(cached) ' if hit else ''}{path}")
            if result.table is not None:
                threestudio.info("antijanus: PMI table (word x view)\n" + result.table.format())
            for view in result.kept_whole:
                threestudio.info(f"antijanus: view {view} keeps the whole prompt: removing the words the rule "
                                 f"finds contradicting it, {result.removed[view]}, would leave no content word")
            report = {**result.as_dict(), "settings": {
                "model": model, "threshold": cfg.debias_threshold, "normalization": cfg.pmi_normalization,
                "p_word": cfg.debias_p_word, "word_units": cfg.debias_word_units,
                "view_words": dict(zip(DIRECTION_ORDER, self.settings.view_words))}}
            report_path = expand_trial_dir("report_path", cfg.report_path)
            if report_path:
                write_report(report_path, report)
            return result

        return rank_zero_then_shared("prompt debiasing", compute, lambda: run(no_model_on_other_ranks)[0])


def write_report(path: str, report: Dict) -> None:
    write_json(path, report)
    threestudio.info(f"antijanus: prompt-debiasing report {path}")


@register("bert-pmi-prompt-processor")
class BertPMIPromptProcessor(DebiasingPromptProcessorMixin, StableDiffusionPromptProcessor):
    """threestudio's Stable Diffusion prompt processor (CLIP) with D-SDS prompt debiasing."""
    @dataclass
    class Config(DebiasingKeys, StableDiffusionPromptProcessor.Config):
        pass

    cfg: Config


@register("bert-pmi-deep-floyd-prompt-processor")
class BertPMIDeepFloydPromptProcessor(DebiasingPromptProcessorMixin, PromptProcessor):
    """threestudio's DeepFloyd IF prompt processor (T5, 77 tokens, attention mask) with D-SDS
    prompt debiasing, and T5 in 8 bit only where that can work (``t5_load_in_8bit``)."""
    text_encoder_kind = "t5"

    @dataclass
    class Config(DebiasingKeys, PromptProcessor.Config):
        pretrained_model_name_or_path: str = "DeepFloyd/IF-I-XL-v1.0"
        t5_load_in_8bit: Optional[bool] = None  # null: 8 bit (threestudio) on CUDA with bitsandbytes, else full

    cfg: Config

    def configure_text_encoder_choice(self) -> None:
        self.load_in_8bit = resolve_load_in_8bit(self.cfg.t5_load_in_8bit)
        self.spawn_func = t5_spawn_func(self.load_in_8bit)
        threestudio.info(f"antijanus: T5 text encoder in {'8 bit' if self.load_in_8bit else 'full precision'}")
