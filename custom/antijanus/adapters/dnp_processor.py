"""Diffusion-negative prompting as a threestudio prompt processor (``dnp-prompt-processor``)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Optional

import threestudio
from threestudio.models.prompt_processors.stable_diffusion_prompt_processor import StableDiffusionPromptProcessor

from ..prompting import dnp
from ..prompting.captioning import check_captioner, load_captioner
from ..prompting.dnp import SamplingSettings, cached_dnp
from ..utils.cache import write_json
from .prompt_base import (AntijanusPromptProcessorMixin, expand_trial_dir, keys_changed_from_defaults,
                          load_prompt_library, no_model_on_other_ranks, rank_zero_then_shared)
from .registry import register

# the view phrases threestudio's processor appends ("<prompt>, side view"; "backside view of <prompt>")
THREESTUDIO_VIEW_PHRASES = ("side view", "front view", "back view", "backside view", "overhead view")
# keys that only matter with negative_prompt: auto
_AUTO_DNP_ONLY = ("dns_steps", "dns_guidance_scale", "dns_seed", "dns_half_precision", "captioner",
                  "caption_max_new_tokens", "dnp_cache_dir", "dnp_output_dir")


def write_dnp_outputs(folder: str, prompt: str, result) -> None:
    """A copy of the DNS image and n* (JSON) in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(result.image_path, os.path.join(folder, "dns-image.png"))
    write_json(os.path.join(folder, "dnp.json"), {"prompt": prompt, "negative_prompt": result.negative_prompt,
                                                  "dns_image": result.image_path})
    threestudio.info(f"antijanus: DNS image and n* in {folder}")


@register("dnp-prompt-processor")
class DNPPromptProcessor(AntijanusPromptProcessorMixin, StableDiffusionPromptProcessor):
    """threestudio's SD prompt processor with automatic diffusion-negative prompting: with
    ``negative_prompt: auto`` it samples the DNS image of the prompt once (rank 0, cached),
    captions it into n* and uses n* as the negative prompt, i.e. as threestudio uses any
    negative prompt: the unconditional embedding of classifier-free guidance, CFG(p, n*), the
    DNP paper's form. (A guidance with ``negative_prompt_weight > 0`` makes n* a Perp-Neg negative
    instead, with "" as the unconditional.) Any other negative_prompt is used as given, e.g. an
    n* written by hand after looking at the saved DNS image."""
    @dataclass
    class Config(StableDiffusionPromptProcessor.Config):
        prompt: Optional[str] = "a hamburger"  # threestudio's; Optional: `prompt=` (None) is our ConfigError
        negative_prompt: str = "auto"
        dns_steps: int = 50
        dns_guidance_scale: float = 7.5
        dns_seed: int = 0
        dns_half_precision: bool = True
        captioner: str = "Salesforce/blip-image-captioning-base"
        caption_max_new_tokens: int = 30
        dnp_cache_dir: str = ".threestudio_cache/dnp"
        dnp_output_dir: Optional[str] = None  # copy of the DNS image and n* (JSON); may use {trial_dir}

    cfg: Config
    view_phrase_key = None  # threestudio's view phrases

    def configure(self) -> None:
        cfg = self.cfg
        self.prompt_library = load_prompt_library()
        prompt = self.require_prompt(self.preprocess_prompt(self.require_prompt(cfg.prompt)))
        self.check_prompt_subject(prompt, THREESTUDIO_VIEW_PHRASES)  # before any sampling
        self.dnp = None
        if cfg.negative_prompt.strip().lower() == "auto":
            settings = SamplingSettings(cfg.dns_steps, cfg.dns_guidance_scale, cfg.dns_seed).validate()
            check_captioner(cfg.captioner, max_new_tokens=cfg.caption_max_new_tokens)  # before any sampling
            self.dnp = self.run_dnp(settings)
            cfg.negative_prompt = self.dnp.negative_prompt
            threestudio.info(f"antijanus: auto-DNP negative prompt n* = [{self.dnp.negative_prompt}] "
                             f"(DNS image {self.dnp.image_path})")
        else:
            self.warn_unused_dnp_keys()
        super().configure()
        self.load_empty_text_embeddings()

    def warn_unused_dnp_keys(self) -> None:
        changed = keys_changed_from_defaults(self.cfg, self.Config, _AUTO_DNP_ONLY)
        if changed:
            threestudio.warn(f"antijanus: negative_prompt is given ({self.cfg.negative_prompt!r}, not 'auto'), "
                             f"so {changed} have no effect")

    def run_dnp(self, settings):
        cfg = self.cfg
        prompt = self.preprocess_prompt(cfg.prompt)  # (the prompt library: loaded by configure)
        device = self.device

        half_precision = cfg.dns_half_precision and device.type == "cuda"

        def sampler():
            return dnp.load_sampler(cfg.pretrained_model_name_or_path, device, half_precision=half_precision)

        def captioner():
            return load_captioner(cfg.captioner, device=device, max_new_tokens=cfg.caption_max_new_tokens)

        def run(make_sampler, make_captioner, use_cache=True):
            return cached_dnp(prompt, cfg.pretrained_model_name_or_path, settings, cfg.captioner,
                              cfg.dnp_cache_dir, make_sampler, make_captioner, use_cache=use_cache,
                              log=threestudio.info, variant={"caption_max_new_tokens": cfg.caption_max_new_tokens,
                                                             "half_precision": half_precision})

        def compute():
            result = run(sampler, captioner, cfg.use_cache)
            if result.cache_hit:
                threestudio.info(f"antijanus: auto-DNP (cached) {result.record_path}")
            output_dir = expand_trial_dir("dnp_output_dir", cfg.dnp_output_dir)
            if output_dir:
                write_dnp_outputs(output_dir, prompt, result)
            return result

        return rank_zero_then_shared("diffusion-negative sampling", compute,
                                     lambda: run(no_model_on_other_ranks, no_model_on_other_ranks))
