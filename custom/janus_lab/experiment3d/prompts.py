"""Prompt outputs of every (variant, prompt) for the fast path, with the lab's models in the
processors: the prior's text encoder, the lab masked LM as ``debias_model``, the lab captioner
for DNP's n* (``lab.prompt_output`` builds them as the processors do)."""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

from antijanus.prompting.captioning import check_captioner, load_captioner
from antijanus.prompting.dnp import SamplingSettings, cached_dnp, load_sampler
from antijanus.prompting.mlm import MaskedLMViewScorer

from ..prompt_output import LabPromptOutput, PromptEncoder, build_prompt_output
from .lab_models import LabModels, load_backbone
from .variants import Variant, block, load_config


class PromptFactory:
    """``factory(variant, prompt, steps)``: the prompt output the variant's processor gives."""

    def __init__(self, models: LabModels, backbone=None, cache_dir: Optional[str] = None, log=print) -> None:
        self.models = models
        self.backbone = backbone or load_backbone(models.prior)
        self.encode = PromptEncoder(self.backbone)
        self.cache_dir = cache_dir
        self.log = log
        self._scorer = None
        self._captioner = None

    def scorer(self, model: str) -> MaskedLMViewScorer:
        if self._scorer is None:
            self._scorer = MaskedLMViewScorer(model, device="cpu")
        return self._scorer

    def captioner(self, settings: Mapping[str, Any]):
        """The captioner as ``dnp-prompt-processor`` loads it (a plugin folder or BLIP), once."""
        if self._captioner is None:
            self._captioner = load_captioner(settings["captioner"], device="cpu",
                                             max_new_tokens=int(settings["caption_max_new_tokens"]))
        return self._captioner

    def auto_negative(self, prompt: str, settings: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
        """n* as ``dnp-prompt-processor`` makes it: DNS image with the prior, captioned."""
        check_captioner(settings["captioner"], max_new_tokens=int(settings["caption_max_new_tokens"]))
        sampling = SamplingSettings(int(settings["dns_steps"]), float(settings["dns_guidance_scale"]),
                                    int(settings["dns_seed"])).validate()
        cache = os.path.join(self.cache_dir or ".", "dnp")
        result = cached_dnp(prompt, self.models.prior, sampling, settings["captioner"], cache,
                            lambda: load_sampler(self.models.prior, "cpu", half_precision=False),
                            lambda: self.captioner(settings), log=self.log, progress=False)
        return result.negative_prompt, {"negative_prompt": result.negative_prompt, "dns_image": result.image_path,
                                        "captioner": settings["captioner"]}

    def lab_block(self, cfg) -> Dict[str, Any]:
        """The config's processor block with the lab's models in it."""
        values = block(cfg, "system.prompt_processor")
        values["pretrained_model_name_or_path"] = self.models.prior
        if cfg.system.prompt_processor_type == "bert-pmi-prompt-processor":
            values["debias_model"] = self.models.mlm
        if cfg.system.prompt_processor_type == "dnp-prompt-processor":
            values["captioner"] = self.models.captioner
        return values

    def __call__(self, variant: Variant, prompt: str, steps: int) -> LabPromptOutput:
        cfg = load_config(variant.config, variant.overrides, steps)
        debias_cache = os.path.join(self.cache_dir, "prompt_debiasing") if self.cache_dir else None
        return build_prompt_output(cfg.system.prompt_processor_type, self.lab_block(cfg), prompt, self.encode,
                                   make_scorer=self.scorer, auto_negative=self.auto_negative,
                                   debias_cache_dir=debias_cache)
