"""The 3D experiment's variants (a shipped config plus the overrides that select a method), its
prompts, and the configs read as the fast path reads them (the plugin's shipped configs, found
when a config is loaded: ``locations.plugin_config_dir``). ``VARIANTS`` are the SDS / SJC / DNP
methods every command runs by default; ``VSD_VARIANTS`` (ProlificDreamer's VSD) run only when named
(``--variants vsd ...``), so that the commands run before them keep their meaning."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from antijanus.core.guidance import DSDSConfig, ScoreDistillationConfig
from antijanus.core.guidance_config import VSDConfig
from antijanus.utils.errors import ConfigError

from ..locations import plugin_config_dir
from ..world import KINDS

REPRESENTATION_CONFIG = "perp-neg-nerf-sd.yaml"  # cameras, losses, optimiser, material, blob
GUIDANCE_CONFIGS = {"perp-neg-sds-guidance": ScoreDistillationConfig, "dsds-guidance": DSDSConfig,
                    "perp-neg-vsd-guidance": VSDConfig}


@dataclass(frozen=True)
class Variant:
    name: str
    config: str  # file name in the plugin's configs/ (or an absolute path)
    overrides: Tuple[str, ...]  # threestudio command-line overrides that select the method
    description: str


# The methods, each a shipped config with its own settings (guidance scale, step range, clip
# schedule over the run's own steps, front range, view phrases, ...). "baseline" and "sjc" are
# the plain view-dependent versions of their paths (threestudio's stock view prompts).
VARIANTS: Tuple[Variant, ...] = (
    Variant("baseline", "perp-neg-nerf-sd.yaml",
            ("system.prompt_processor.use_perp_neg=false",),
            "SDS with view-dependent prompts (threestudio's stock processor)"),
    Variant("perp-neg", "perp-neg-nerf-sd.yaml", (), "Perp-Neg SDS"),
    Variant("dsds-clip", "dsds-nerf-sd.yaml", (), "D-SDS score clipping 2 -> 8"),
    Variant("dsds-full", "dsds-full-nerf-sd.yaml", (),
            "D-SDS score clipping + prompt debiasing (lab masked LM; front +-22.5, 'top view')"),
    Variant("perp-neg-dsds", "perp-neg-dsds-nerf-sd.yaml", (), "Perp-Neg + D-SDS score clipping"),
    Variant("sjc", "dsds-sjc-sd.yaml",
            ("system.guidance.score_clipping=false", "system.prompt_processor.use_prompt_debiasing=false",
             "system.prompt_processor.front_threshold=45.0",
             "system.prompt_processor.view_phrases.overhead=overhead view"),
            "SJC's score with view-dependent prompts (threestudio's view phrases and ranges), on the fast "
            "path's shared volume (the launcher path runs SJC's own latent volume)"),
    Variant("sjc-dsds", "dsds-sjc-sd.yaml", (),
            "SJC + D-SDS: clipping of SJC's score + prompt debiasing (the D-SDS paper's setting), on the "
            "fast path's shared volume"),
    Variant("dnp", "dnp-nerf-sd.yaml", (), "DNP in the paper's form, CFG(p, n*), n* from the lab captioner"),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)

# VSD (ProlificDreamer, threestudio's prolificdreamer.yaml with our guidance): opt-in, never in the
# default list. "vsd" is the plain one (threestudio's stock processor, Perp-Neg off, as "baseline");
# "vsd-dsds-clip" adds perp-neg-dsds-vsd-sd.yaml's clipping of VSD's gradient without Perp-Neg or
# debiasing (as "dsds-clip" for SDS).
VSD_CLIP = ("system.guidance.score_clipping=true", "system.guidance.clip_schedule=linear",
            "system.guidance.clip_start=2.0", "system.guidance.clip_end=8.0",
            "system.guidance.clip_end_step=${trainer.max_steps}")
VSD_VARIANTS: Tuple[Variant, ...] = (
    Variant("vsd", "perp-neg-vsd-sd.yaml", ("system.prompt_processor.use_perp_neg=false",),
            "VSD with view-dependent prompts (threestudio's stock processor, Perp-Neg off)"),
    Variant("vsd-perp-neg", "perp-neg-vsd-sd.yaml", (), "VSD + Perp-Neg on the pretrained branch"),
    Variant("vsd-dsds-clip", "perp-neg-vsd-sd.yaml", ("system.prompt_processor.use_perp_neg=false",) + VSD_CLIP,
            "VSD + D-SDS score clipping 2 -> 8 of VSD's gradient (Perp-Neg off, no debiasing)"),
    Variant("vsd-perp-neg-dsds", "perp-neg-dsds-vsd-sd.yaml", (),
            "VSD + Perp-Neg + the full D-SDS (clipping 2 -> 8, prompt debiasing with the lab masked LM; "
            "front +-22.5, 'top view')"),
)
VSD_VARIANT_NAMES = tuple(v.name for v in VSD_VARIANTS)
ALL_VARIANT_NAMES = VARIANT_NAMES + VSD_VARIANT_NAMES  # what --variants accepts


def lab_prompts(kinds: Sequence[str] = KINDS) -> List[str]:
    """Each kind with and without the front-only attribute: "a bear", "a smiling bear", ..."""
    return [p for kind in kinds for p in (f"a {kind}", f"a smiling {kind}")]


def variant_by_name(name: str) -> Variant:
    """A variant of VARIANTS or VSD_VARIANTS."""
    for variant in VARIANTS + VSD_VARIANTS:
        if variant.name == name:
            return variant
    raise ConfigError("variants", name, "unknown variant", list(ALL_VARIANT_NAMES))


def config_path(config: str) -> str:
    """A config's file: an absolute path as it is, a name in the plugin's shipped configs."""
    return config if os.path.isabs(config) else os.path.join(plugin_config_dir(), config)


def load_config(config: str, overrides: Sequence[str] = (), max_steps: Optional[int] = None):
    """A config with command-line style overrides (``trainer.max_steps`` set first, so that
    ``${trainer.max_steps}`` resolves to the run's own length)."""
    cfg = OmegaConf.load(config_path(config))
    if max_steps is not None:
        cfg.merge_with_dotlist([f"trainer.max_steps={int(max_steps)}"])
    if overrides:
        cfg.merge_with_dotlist(list(overrides))
    return cfg


def block(cfg, key: str) -> Dict[str, Any]:
    """The config's block at ``key`` as a resolved dict ({} when absent)."""
    node = OmegaConf.select(cfg, key)
    return {} if node is None else OmegaConf.to_container(node, resolve=True)


def guidance_config(cfg, prior: str) -> ScoreDistillationConfig:
    """The variant's guidance block as our guidance's config, on the lab prior (fp32 weights, as
    the CPU mode sets them); VSD's LoRA branch on the lab prior too (its one UNet shared, with
    threestudio's rule: the LoRA model named as the pretrained one)."""
    kind = cfg.system.guidance_type
    if kind not in GUIDANCE_CONFIGS:
        raise ConfigError("system.guidance_type", kind, "has no lab equivalent", sorted(GUIDANCE_CONFIGS))
    values = block(cfg, "system.guidance")
    known = {f.name for f in dataclasses.fields(GUIDANCE_CONFIGS[kind])}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"system.guidance.{unknown[0]}", values[unknown[0]], "unknown guidance key")
    values.update(pretrained_model_name_or_path=prior, half_precision_weights=False)
    if GUIDANCE_CONFIGS[kind] is VSDConfig:
        values["pretrained_model_name_or_path_lora"] = prior
    return GUIDANCE_CONFIGS[kind](**values)
