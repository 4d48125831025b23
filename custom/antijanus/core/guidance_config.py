"""The guidance's configuration: every key with its default, resolved and checked before any
model loads.

``resolve_config`` checks every key (a ``ConfigError`` naming it) and resolves what the keys
leave open: the backbone (detected from the model), the guidance scale and D-SDS clip range
(the backbone's defaults), the Perp-Neg weight functions (preset, then per-function keys).
``config_warnings`` lists keys that are valid but have no effect, or that act twice. Every number
key must be finite, and one outside its sensible range is said once (``config_ranges.py``).

Perp-Neg on or off (``decide_perp_neg``, at the first step, when the processor's output is
known): ``perp_neg: null`` (the default of both registered names) follows the prompt processor's
``use_perp_neg`` (threestudio's stock processors carry it, default false), with the processor's
``perp_neg_f_*`` weights unless the guidance sets its own; a processor output without that field
takes the name's default (`perp-neg-sds-guidance` on, `dsds-guidance` off). An explicit
``perp_neg`` wins, with one logged line when it overrides the processor. Perp-Neg-only keys
(``perp_neg_preset``, ``perp_neg_f_*``, ``overhead_negatives``) while Perp-Neg is off: one warning
naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from ..backbones import BACKBONES, detect_backbone
from ..backbones.base import BackboneOptions
from ..utils.errors import (ConfigError, require_choice, require_finite, require_non_negative,
                            require_positive)
from .config_ranges import check_finite_keys, range_warnings
from .dsds import CLIP_SCHEDULES, CLIP_TARGETS, ClipSchedule, clip_target_of_path, describe_clip
from .prompts import ProcessorPerpNeg, processor_perp_neg
from .sds import WEIGHTING_STRATEGIES, check_schedule, check_step_range
from .vsd import CAMERA_CONDITION_TYPES
from .views import PERP_NEG_PRESETS, DecayWeight, PerpNegWeights, overhead_negative_vector

WEIGHT_FUNCTIONS = ("perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf")
CLIP_KEYS = ("clip_schedule", "clip_start", "clip_end", "clip_start_step", "clip_end_step", "clip_target")
DEFAULT_PRESET = "threestudio"


@dataclass
class ScoreDistillationConfig(BackboneOptions):
    """Every key of the guidance, with its default. Every key of threestudio's
    ``stable-diffusion-guidance`` and ``deep-floyd-guidance`` keeps its name and meaning. ``None``
    defaults are resolved as documented (backbone values, the processor, the running trainer)."""

    backbone: Optional[str] = None  # None: detected from the model (IF folder / hub id: deepfloyd-if)
    guidance_scale: Optional[float] = None  # SD 100, IF 20
    weighting_strategy: str = "sds"
    min_step_percent: Any = 0.02  # a number or a threestudio schedule list
    max_step_percent: Any = 0.98
    sqrt_anneal: bool = False  # HiFA: t/T from max to min as sqrt(step / trainer_max_steps)
    trainer_max_steps: Optional[int] = None  # None: the running trainer's max_steps
    grad_clip: Optional[Any] = None  # clamp of the final gradient (threestudio's)
    view_dependent_prompting: bool = True
    use_sjc: bool = False  # Score Jacobian Chaining's score instead of SDS
    var_red: bool = True  # SJC's variance reduction
    use_img_loss: bool = False  # HiFA's image-space SDS (loss_sds_img)
    max_items_eval: int = 4  # guidance_eval previews: items per batch (-1: all)

    # Perp-Neg
    perp_neg: Optional[bool] = None  # None: follow the prompt processor's use_perp_neg
    perp_neg_preset: Optional[str] = None  # None: the processor's weights, else "threestudio"
    perp_neg_f_sb: Optional[List[float]] = None  # [a, b, c] or [a, b, c, cutoff]
    perp_neg_f_fsb: Optional[List[float]] = None
    perp_neg_f_fs: Optional[List[float]] = None
    perp_neg_f_sf: Optional[List[float]] = None
    overhead_negatives: Dict[str, float] = field(default_factory=dict)
    negative_prompt_weight: float = 0.0

    # D-SDS dynamic score clipping (dsds.py)
    score_clipping: bool = False
    clip_schedule: Optional[str] = None  # linear | constant | cosine (None: linear)
    clip_start: Optional[float] = None  # SD 2.0, IF 0.5
    clip_end: Optional[float] = None  # SD 8.0, IF 2.0
    clip_start_step: Optional[int] = None  # None: 0
    clip_end_step: Optional[int] = None  # None: trainer_max_steps, else the run's trainer.max_steps
    clip_target: Optional[str] = None  # None: the recipe of the path (gradient); or residual

    #: Perp-Neg when ``perp_neg`` is unset and the processor output has no ``use_perp_neg``.
    PERP_NEG_WITHOUT_PROCESSOR: ClassVar[bool] = True


@dataclass
class DSDSConfig(ScoreDistillationConfig):
    """`dsds-guidance`: the same guidance with D-SDS score clipping on by default; Perp-Neg with
    ``perp_neg: true`` (or the processor's ``use_perp_neg``)."""

    score_clipping: bool = True
    PERP_NEG_WITHOUT_PROCESSOR: ClassVar[bool] = False


@dataclass
class VSDConfig(ScoreDistillationConfig):
    """`perp-neg-vsd-guidance`: variational score distillation (ProlificDreamer), drop-in for
    threestudio's ``stable-diffusion-vsd-guidance``: its keys, defaults and meanings (the CFG form
    is the same, so guidance_scale 7.5 is 7.5). Perp-Neg on the pretrained branch follows the
    processor's ``use_perp_neg`` (off without it, as threestudio's VSD); D-SDS clipping with
    ``score_clipping: true``."""

    pretrained_model_name_or_path: Optional[str] = "stabilityai/stable-diffusion-2-1-base"
    pretrained_model_name_or_path_lora: Optional[str] = "stabilityai/stable-diffusion-2-1"
    guidance_scale: Optional[float] = 7.5
    guidance_scale_lora: float = 1.0  # the LoRA branch's camera CFG (below 1: ESD, core/vsd.py)
    lora_cfg_training: bool = True  # camera dropout 0.1 while training the LoRA
    lora_n_timestamp_samples: int = 1
    camera_condition_type: str = "extrinsics"  # or mvp
    PERP_NEG_WITHOUT_PROCESSOR: ClassVar[bool] = False


def check_vsd_keys(config: VSDConfig, backbone: str) -> None:
    """The VSD keys, and the keys of the SDS path that VSD does not have."""
    if backbone != "stable-diffusion":
        raise ConfigError("pretrained_model_name_or_path", config.pretrained_model_name_or_path,
                          f"is a {backbone} model; VSD's LoRA branch needs Stable Diffusion")
    if config.use_sjc:
        raise ConfigError("use_sjc", True, "is not available with VSD (SJC's score has no "
                          "LoRA branch)", [False])
    if config.weighting_strategy != "sds":
        raise ConfigError("weighting_strategy", config.weighting_strategy,
                          "has no effect with VSD (its w(t) is 1 - abar_t, threestudio's)", ["sds"])
    if not config.var_red:
        raise ConfigError("var_red", False, "has no effect without use_sjc: true", [True])
    require_finite("guidance_scale_lora", config.guidance_scale_lora)
    require_choice("camera_condition_type", config.camera_condition_type, CAMERA_CONDITION_TYPES)
    n = config.lora_n_timestamp_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("lora_n_timestamp_samples", n, "must be an integer >= 1")
    if not config.pretrained_model_name_or_path_lora:
        raise ConfigError("pretrained_model_name_or_path_lora", config.pretrained_model_name_or_path_lora,
                          "must name the LoRA branch's model (the pretrained one to share its UNet)")


@dataclass(frozen=True)
class ClipSettings:
    """D-SDS clipping as configured; the end step may only be known once training runs."""

    kind: str
    start: float
    end: float
    start_step: int
    end_step: Optional[int]  # None: the schedule length (trainer_max_steps / trainer.max_steps)
    target: str

    @property
    def needs_length(self) -> bool:
        return self.end_step is None and self.kind != "constant"

    def schedule(self, length: Optional[int]) -> ClipSchedule:
        end_step = self.end_step if self.end_step is not None else length
        if end_step is None:  # constant: no end
            end_step = self.start_step + 1
        return ClipSchedule(self.kind, self.start, self.end, self.start_step, end_step).validate()

    def describe(self, schedule: ClipSchedule, use_sjc: bool, length_source: str, method: str = "sds") -> str:
        what = f"D-SDS clipping of {describe_clip(self.target, use_sjc, method)}"
        if self.kind == "constant":
            return f"{what}: constant {self.start:g}"
        source = "clip_end_step" if self.end_step is not None else length_source
        return (f"{what}: {self.kind} {self.start:g} -> {self.end:g} from step {self.start_step} "
                f"to step {schedule.end_step} ({source})")


@dataclass(frozen=True)
class ResolvedConfig:
    backbone: str
    guidance_scale: float
    own_weights: Optional[PerpNegWeights]  # None: the guidance sets no Perp-Neg weight key
    overhead_negative: tuple
    clip: Optional[ClipSettings]
    warnings: Tuple[str, ...] = ()  # config-time warnings (keys without effect, double clipping, ranges)
    unusual_keys: Tuple[str, ...] = ()  # keys outside their sensible range (config_ranges.py)


def resolve_config(config: ScoreDistillationConfig) -> ResolvedConfig:
    """Check every key (raising ConfigError that names it) and resolve the weight functions."""
    name = config.backbone or detect_backbone(config.pretrained_model_name_or_path)
    require_choice("backbone", name, BACKBONES)
    backbone = BACKBONES[name]
    check_finite_keys(config)  # inf passes "> 0": every number key is checked for it first
    guidance_scale = backbone.DEFAULT_GUIDANCE_SCALE if config.guidance_scale is None else config.guidance_scale
    require_positive("guidance_scale", guidance_scale)
    require_choice("weighting_strategy", config.weighting_strategy, WEIGHTING_STRATEGIES)
    check_step_range("min_step_percent", config.min_step_percent,
                     "max_step_percent", config.max_step_percent)
    if config.trainer_max_steps is not None:
        require_positive("trainer_max_steps", config.trainer_max_steps)
    if config.grad_clip is not None:
        check_schedule("grad_clip", config.grad_clip, 0.0, float("inf"))
    if isinstance(config, VSDConfig):
        check_vsd_keys(config, name)
    else:
        check_path_keys(config)
    if config.perp_neg_preset is not None:
        require_choice("perp_neg_preset", config.perp_neg_preset, PERP_NEG_PRESETS)
    require_non_negative("negative_prompt_weight", config.negative_prompt_weight)
    if config.perp_neg and not config.view_dependent_prompting:
        raise ConfigError("view_dependent_prompting", False,
                          "Perp-Neg needs view-dependent prompts (or set perp_neg: false)", [True])
    own_weights, overhead = own_perp_neg_weights(config), overhead_negative_vector(config.overhead_negatives)
    clip = clip_settings(config, backbone.DEFAULT_CLIP)
    unusual = range_warnings(config, float(guidance_scale), None if clip is None else clip.kind)
    return ResolvedConfig(
        backbone=name,
        guidance_scale=float(guidance_scale),
        own_weights=own_weights,
        overhead_negative=overhead,
        clip=clip,
        warnings=tuple(config_warnings(config)) + tuple(unusual.values()),
        unusual_keys=tuple(unusual),
    )


def check_path_keys(config: ScoreDistillationConfig) -> None:
    """Keys of one path (SDS or SJC) that would have no effect on the other are errors."""
    if config.use_sjc:
        if config.weighting_strategy != "sds":
            raise ConfigError("weighting_strategy", config.weighting_strategy,
                              "has no effect with use_sjc: true (SJC's score has no w(t))", ["sds"])
        if config.use_img_loss:
            raise ConfigError("use_img_loss", True, "has no effect with use_sjc: true (HiFA's image "
                              "loss is built on the SDS path; threestudio returns 0 for it)", [False])
        if config.clip_target == "residual":
            raise ConfigError("clip_target", "residual", "is the SDS option (clip before w(t)); SJC "
                              "has no w(t), its score is clipped directly", [None, "gradient"])
    elif not config.var_red:
        raise ConfigError("var_red", False, "has no effect without use_sjc: true "
                          "(SJC's variance reduction)", [True])


def own_perp_neg_weights(config: ScoreDistillationConfig) -> Optional[PerpNegWeights]:
    """The guidance's own weight functions (preset, then per-function overrides), or None when
    it sets no Perp-Neg weight key (the processor's weights, or the threestudio preset, apply)."""
    overrides = {key: getattr(config, key) for key in WEIGHT_FUNCTIONS if getattr(config, key) is not None}
    if config.perp_neg_preset is None and not overrides:
        return None
    preset = PERP_NEG_PRESETS[config.perp_neg_preset or DEFAULT_PRESET]
    functions = {key[len("perp_neg_"):]: getattr(preset, key[len("perp_neg_"):]) for key in WEIGHT_FUNCTIONS}
    for key, value in overrides.items():
        functions[key[len("perp_neg_"):]] = DecayWeight.from_config(key, value)
    return PerpNegWeights(**functions)


def processor_weights(weights: Dict[str, tuple]) -> PerpNegWeights:
    return PerpNegWeights(**{key[len("perp_neg_"):]: DecayWeight.from_config(f"prompt_processor.{key}", value)
                             for key, value in weights.items()})


def clip_settings(config: ScoreDistillationConfig, default_clip: Tuple[float, float]) -> Optional[ClipSettings]:
    if not config.score_clipping:
        return None
    kind = config.clip_schedule or "linear"
    require_choice("clip_schedule", kind, CLIP_SCHEDULES)
    if config.clip_target is not None:
        require_choice("clip_target", config.clip_target, CLIP_TARGETS)
    settings = ClipSettings(
        kind=kind,
        start=float(default_clip[0] if config.clip_start is None else config.clip_start),
        end=float(default_clip[1] if config.clip_end is None else config.clip_end),
        start_step=int(config.clip_start_step or 0),
        end_step=None if config.clip_end_step is None else int(config.clip_end_step),
        target=clip_target_of_path(config.clip_target),
    )
    settings.schedule(settings.start_step + 1)  # the checks that do not need the run length
    return settings


def perp_neg_keys_set(config: ScoreDistillationConfig) -> List[str]:
    """The guidance's Perp-Neg-only keys that are set (they act only while Perp-Neg is on)."""
    keys = [key for key in ("perp_neg_preset", *WEIGHT_FUNCTIONS) if getattr(config, key) is not None]
    return keys + (["overhead_negatives"] if config.overhead_negatives else [])


def config_warnings(config: ScoreDistillationConfig) -> List[str]:
    """One line each for keys that are valid but have no effect, or that act twice."""
    warnings = []
    clip_keys = [key for key in CLIP_KEYS if getattr(config, key) is not None]
    if clip_keys and not config.score_clipping:
        warnings.append(f"{', '.join(clip_keys)} set but score_clipping is false: D-SDS clipping is "
                        "off and these keys have no effect (set score_clipping: true to clip)")
    perp_neg_keys = perp_neg_keys_set(config)
    if perp_neg_keys and config.perp_neg is False:
        warnings.append(f"{', '.join(perp_neg_keys)} set but perp_neg is false: Perp-Neg is off and "
                        "these keys have no effect (set perp_neg: true, or remove them)")
    if config.grad_clip is not None and config.score_clipping:
        warnings.append(f"grad_clip ({config.grad_clip!r}) and score_clipping: true both clip the "
                        "gradient, so the smaller bound of the two acts at every step (grad_clip also "
                        "clamps HiFA's image gradient). The D-SDS authors' recipe grad_clip "
                        "[0, 2.0, 8.0, ...] is what score_clipping does by itself: remove grad_clip, "
                        "or set score_clipping: false to clip with grad_clip alone")
    if config.token_merging_params and not config.token_merging:
        warnings.append("token_merging_params set but token_merging is false: ToMe is off and "
                        "token_merging_params has no effect (set token_merging: true)")
    return warnings

@dataclass(frozen=True)
class PerpNegDecision:
    enabled: bool
    weights: PerpNegWeights
    message: str  # logged once
    conflict: bool  # the guidance overrides the processor: logged as a warning



def decide_perp_neg(config: ScoreDistillationConfig, resolved: ResolvedConfig, prompt_utils: Any) -> PerpNegDecision:
    """Perp-Neg on/off and its weights, from the guidance's keys and the processor's output.

    The guidance's explicit ``perp_neg`` and its own weight keys win; unset ones follow the
    processor's ``use_perp_neg`` / ``perp_neg_f_*`` (threestudio's processor-side Perp-Neg), else
    the name's default and the `threestudio` preset (equal to threestudio's processor defaults).
    """
    processor = processor_perp_neg(prompt_utils)
    enabled, source, conflicts = perp_neg_switch(config, processor)
    weights, weight_source, weight_conflicts = perp_neg_weights(resolved, processor, enabled)
    conflicts += weight_conflicts
    state = f"on, weights from {weight_source}" if enabled else "off"
    message = f"Perp-Neg {state} ({source})"
    if conflicts:
        message += "; " + "; ".join(conflicts)
    return PerpNegDecision(enabled, weights, message, bool(conflicts))


def perp_neg_switch(config: ScoreDistillationConfig, processor: Optional[ProcessorPerpNeg]
                    ) -> Tuple[bool, str, List[str]]:
    """Perp-Neg on or off, where that came from, and the processor settings it overrides."""
    conflicts: List[str] = []
    if config.perp_neg is not None:
        enabled = bool(config.perp_neg)
        source = "set by the guidance's perp_neg"
        if processor is not None and processor.use_perp_neg != enabled:
            conflicts.append(f"the guidance's perp_neg: {str(enabled).lower()} wins over the prompt "
                             f"processor's use_perp_neg: {str(processor.use_perp_neg).lower()}")
    elif processor is not None:
        enabled = processor.use_perp_neg
        source = f"perp_neg unset: following the prompt processor's use_perp_neg: {str(enabled).lower()}"
        if not enabled:
            source += ("; for Perp-Neg set use_perp_neg: true on the prompt processor or perp_neg: "
                       "true on the guidance")
    else:
        enabled = type(config).PERP_NEG_WITHOUT_PROCESSOR
        source = f"perp_neg unset and the prompt processor has no use_perp_neg: {str(enabled).lower()}"
    unused = perp_neg_keys_set(config)
    if not enabled and config.perp_neg is None and unused:  # explicit false: a config-time warning
        conflicts.append(f"{', '.join(unused)} set but Perp-Neg is off, so they have no effect (set "
                         "perp_neg: true to use them, or remove them)")
    return enabled, source, conflicts


def perp_neg_weights(resolved: ResolvedConfig, processor: Optional[ProcessorPerpNeg], enabled: bool
                     ) -> Tuple[PerpNegWeights, str, List[str]]:
    """The weight functions (the guidance's own, the processor's, or the default preset), where
    they came from, and the processor weights they override."""
    if resolved.own_weights is not None:
        weights, conflicts = resolved.own_weights, []
        # a warning only against weights the user set on the processor (not its defaults)
        if (enabled and processor is not None and processor.weights is not None
                and processor.use_perp_neg and processor_weights(processor.weights) != weights
                and processor_weights(processor.weights) != PERP_NEG_PRESETS[DEFAULT_PRESET]):
            conflicts.append("the guidance's perp_neg_preset / perp_neg_f_* win over the prompt "
                             f"processor's perp_neg_f_* {processor.weights}")
        return weights, "the guidance's perp_neg_* keys", conflicts
    if processor is not None and processor.weights is not None:
        return processor_weights(processor.weights), "the prompt processor's perp_neg_f_*", []
    return PERP_NEG_PRESETS[DEFAULT_PRESET], f"the {DEFAULT_PRESET} preset", []
