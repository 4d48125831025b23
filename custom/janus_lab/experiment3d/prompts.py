"""Prompt outputs of every (variant, prompt) for the fast path, with the lab's models in the
processors: the prior's text encoder, the lab masked LM as ``debias_model``, the lab captioner
for DNP's n* (``lab.prompt_output`` builds them as the processors do). Also: the per-view
prompts each variant's processor produced, as a markdown table for the experiment's report
(``per_view_prompt_lines``), and the masked LM's debiasing gate (``debiasing_gate``, the
pre-registration's seventh entry, item 6) through the same path."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from antijanus.prompting.captioning import check_captioner, load_captioner
from antijanus.prompting.dnp import SamplingSettings, cached_dnp, load_sampler
from antijanus.prompting.mlm import MaskedLMViewScorer
from antijanus.utils.cache import read_json
from antijanus.utils.naming import slug

from ..prompt_output import DIRECTION_ORDER, LabPromptOutput, PromptEncoder, build_prompt_output, processor_settings
from ..world import KINDS
from .lab_models import LabModels, load_backbone
from .variants import Variant, block, load_config, variant_by_name


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


def user_parts(output: LabPromptOutput) -> Dict[str, str]:
    """Each view's prompt without the processor's view phrase ("a bear, back view" -> "a bear")."""
    parts = {}
    for direction, text in zip(output.directions, output.prompts_vd):
        suffix = f", {direction.phrase}"
        parts[direction.name] = text[: -len(suffix)] if text.endswith(suffix) else text
    return parts


GATE_VARIANT = "dsds-full"  # bert-pmi-prompt-processor with dsds-full-nerf-sd.yaml's settings


def gate_kind(factory: PromptFactory, kind: str, steps: int = 600) -> Dict[str, Any]:
    """Item 6's checks for one kind, through the ``dsds-full`` variant's processor: the back view
    of "a smiling <kind>" lacks "smiling" and keeps the kind, its front view keeps both, "a
    <kind>" is unchanged in every view, and P(front | "a smiling <kind>") > P(front | "a <kind>")
    (the masked LM's view probabilities over the processor's view words)."""
    variant = variant_by_name(GATE_VARIANT)
    smiling, plain = f"a smiling {kind}", f"a {kind}"
    outputs = {p: factory(variant, p, steps) for p in (smiling, plain)}
    parts = {p: user_parts(o) for p, o in outputs.items()}
    cfg = load_config(variant.config, variant.overrides, steps)
    settings = processor_settings(cfg.system.prompt_processor_type, factory.lab_block(cfg))
    words = {**{v: v for v in DIRECTION_ORDER}, **dict(settings["pmi_view_words"])}
    probabilities = factory.scorer(settings["debias_model"]).view_probabilities(
        [smiling, plain], [words[v] for v in DIRECTION_ORDER])
    p_front = {p: float(probabilities[i, DIRECTION_ORDER.index("front")]) for i, p in enumerate((smiling, plain))}
    back, front = parts[smiling]["back"].split(), parts[smiling]["front"].split()
    checks = {"back_lacks_smiling": "smiling" not in back, "back_keeps_kind": kind in back,
              "front_keeps_both": "smiling" in front and kind in front,
              "plain_unchanged": all(parts[plain][v] == plain for v in DIRECTION_ORDER),
              "p_front_rises": p_front[smiling] > p_front[plain]}
    return {"prompts_vd": {p: dict(zip(DIRECTION_ORDER, o.prompts_vd)) for p, o in outputs.items()},
            "removed": {p: o.record["debiasing"]["removed"] for p, o in outputs.items()},
            "kept_whole": {p: o.record["debiasing"]["kept_whole"] for p, o in outputs.items()},
            "p_front": p_front, "checks": checks, "passed": all(checks.values())}


def debiasing_gate(mlm: str, kinds: Sequence[str] = KINDS, factory: Optional[PromptFactory] = None) -> Dict[str, Any]:
    """The pre-registered gate of a lab masked LM (seventh entry, item 6) for every kind, the
    masked LM ``mlm`` in the ``dsds-full`` variant's processor (the committed prior's text
    encoder and captioner otherwise). Passed only when every kind passes every check."""
    if factory is None:
        default = LabModels.default()
        factory = PromptFactory(LabModels(default.prior, mlm, default.judge, default.captioner))
    per_kind = {kind: gate_kind(factory, kind) for kind in kinds}
    return {"mlm": mlm, "variant": GATE_VARIANT, "kinds": per_kind,
            "passed": all(r["passed"] for r in per_kind.values())}


def gate_lines(result: Mapping[str, Any]) -> List[str]:
    """The gate's result as markdown: per kind the per-view prompts, P(front) and the checks."""
    lines = [f"Masked LM {result['mlm']} through `{result['variant']}`'s processor: "
             f"{'PASSED' if result['passed'] else 'FAILED'}", "",
             "| prompt | " + " | ".join(DIRECTION_ORDER) + " | P(front) |", "|---" * (len(DIRECTION_ORDER) + 2) + "|"]
    for r in result["kinds"].values():
        for prompt, views in r["prompts_vd"].items():
            lines.append(f"| {prompt} | " + " | ".join(views[v] for v in DIRECTION_ORDER)
                         + f" | {r['p_front'][prompt]:.3f} |")
    lines.append("")
    for kind, r in result["kinds"].items():
        failed = [name for name, ok in r["checks"].items() if not ok]
        lines.append(f"- {kind}: " + ("all checks pass" if not failed else "failed: " + ", ".join(failed)))
    return lines


def per_view_prompt_lines(prompt_dir: str, variants: Sequence[str], prompts: Sequence[str]) -> List[str]:
    """The per-view prompts each variant's processor produced (the records the experiment writes,
    ``prompts/<variant>--<prompt>.json``) as a markdown table, with the negative prompt and the
    words the debiasing removed; pairs without a record are left out."""
    lines = ["## Per-view prompts (each variant's processor)", "",
             "| variant | prompt | " + " | ".join(DIRECTION_ORDER) + " | negative | removed by debiasing |",
             "|---" * (len(DIRECTION_ORDER) + 4) + "|"]
    for variant in variants:
        for prompt in prompts:
            record = read_json(os.path.join(prompt_dir, f"{variant}--{slug(prompt)}.json"))
            if not record:
                continue
            views = record.get("prompts_vd", {})
            removed = record.get("debiasing", {}).get("removed", {})
            removed_text = "; ".join(f"{v}: {' '.join(w)}" for v, w in removed.items() if w) or "-"
            if record.get("debiasing", {}).get("kept_whole"):
                removed_text += f" (kept whole: {', '.join(record['debiasing']['kept_whole'])})"
            lines.append(f"| {variant} | {prompt} | " + " | ".join(str(views.get(v, "")) for v in DIRECTION_ORDER)
                         + f" | {record.get('negative_prompt', '') or '-'} | {removed_text} |")
    return lines


def append_per_view_prompts(markdown: str, prompt_dir: str, variants: Sequence[str], prompts: Sequence[str]) -> None:
    """Append ``per_view_prompt_lines`` to the report's table.md (printed by lab_experiment_3d.py)."""
    lines = per_view_prompt_lines(prompt_dir, variants, prompts)
    with open(markdown, "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")
