"""The one score-distillation guidance path: SDS or SJC, with Perp-Neg view conditioning and
D-SDS dynamic score clipping.

One step, for rendered images x and cameras (elevation, azimuth):

    x_t      = sqrt(abar_t) x + sqrt(1 - abar_t) eps,   t ~ U[min_step, max_step]
    eps_hat  = eps_unc + s * (e_pos - sum_i w_i e_i_perp)       (Perp-Neg, perp_neg.py)
    grad     = w(t) * (eps_hat - eps)                           (SDS, sds.py)
             | eps_hat - eps  (eps_hat without var_red)         (SJC, sjc.py: no w(t))
    grad     = Clip(grad, psi(step))                            (D-SDS, dsds.py)

All UNet rows of a step (positive, unconditional and the negatives that are actually used, for
every sample) go through the backbone in one batched call; each row carries the index of its
sample, so negatives are always paired with their own sample's noisy latent (threestudio's
built-in Perp-Neg pairs them wrongly for batch > 1, its issue 456).

CFG form: every mode uses the paper's eps_unc + s * (...). threestudio's plain SDS/SJC use
eps_text + s * (eps_text - eps_unc) = eps_unc + (s + 1) * e_pos; to reproduce it exactly with
Perp-Neg off, set guidance_scale to s + 1.

Perp-Neg on or off: ``perp_neg: null`` (the default of both registered names) follows the prompt
processor's ``use_perp_neg`` (threestudio's stock processors carry it, default false), with the
processor's ``perp_neg_f_*`` weights unless the guidance sets its own; a processor output without
that field takes the name's default (`perp-neg-sds-guidance` on, `dsds-guidance` off). An explicit
``perp_neg`` wins, with one logged line when it overrides the processor. Perp-Neg-only keys
(``perp_neg_preset``, ``perp_neg_f_*``, ``overhead_negatives``) while Perp-Neg is off: one warning
naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones import BACKBONES, detect_backbone
from ..backbones.base import BackboneOptions, DiffusionBackbone
from ..utils.errors import ConfigError, require_choice, require_non_negative, require_positive
from .dsds import (CLIP_SCHEDULES, CLIP_TARGETS, ClipSchedule, clip_score, clip_target_of_path,
                   describe_clip)
from .perp_neg import perp_neg_noise
from .preview import denoising_previews
from .prompts import (ViewEmbeddings, direction_indices, empty_prompt_embeddings,
                      identical_view_embeddings, processor_perp_neg)
from .sds import (
    WEIGHTING_STRATEGIES,
    add_noise,
    check_schedule,
    check_step_range,
    image_space_gradient,
    predicted_x0,
    scalar_schedule,
    sds_loss,
    sds_weight,
    sqrt_annealed_percent,
    timestep_range,
)
from .sjc import sjc_score
from .views import (
    OVERHEAD,
    PERP_NEG_PRESETS,
    DecayWeight,
    PerpNegWeights,
    overhead_negative_vector,
    plan_perp_neg,
)

logger = logging.getLogger(__name__)

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

    def describe(self, schedule: ClipSchedule, use_sjc: bool, length_source: str) -> str:
        what = f"D-SDS clipping of {describe_clip(self.target, use_sjc)}"
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
    warnings: Tuple[str, ...] = ()  # config-time warnings (keys without effect, double clipping)


def resolve_config(config: ScoreDistillationConfig) -> ResolvedConfig:
    """Check every key (raising ConfigError that names it) and resolve the weight functions."""
    name = config.backbone or detect_backbone(config.pretrained_model_name_or_path)
    require_choice("backbone", name, BACKBONES)
    backbone = BACKBONES[name]
    guidance_scale = backbone.DEFAULT_GUIDANCE_SCALE if config.guidance_scale is None else config.guidance_scale
    require_positive("guidance_scale", guidance_scale)
    require_choice("weighting_strategy", config.weighting_strategy, WEIGHTING_STRATEGIES)
    check_step_range("min_step_percent", config.min_step_percent,
                     "max_step_percent", config.max_step_percent)
    if config.trainer_max_steps is not None:
        require_positive("trainer_max_steps", config.trainer_max_steps)
    if config.grad_clip is not None:
        check_schedule("grad_clip", config.grad_clip, 0.0, float("inf"))
    check_path_keys(config)
    if config.perp_neg_preset is not None:
        require_choice("perp_neg_preset", config.perp_neg_preset, PERP_NEG_PRESETS)
    require_non_negative("negative_prompt_weight", config.negative_prompt_weight)
    if config.perp_neg and not config.view_dependent_prompting:
        raise ConfigError("view_dependent_prompting", False,
                          "Perp-Neg needs view-dependent prompts (or set perp_neg: false)", [True])
    return ResolvedConfig(
        backbone=name,
        guidance_scale=float(guidance_scale),
        own_weights=own_perp_neg_weights(config),
        overhead_negative=overhead_negative_vector(config.overhead_negatives),
        clip=clip_settings(config, backbone.DEFAULT_CLIP),
        warnings=tuple(config_warnings(config)),
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


def build_backbone(config: ScoreDistillationConfig, device: torch.device, name: str) -> DiffusionBackbone:
    options = {k: getattr(config, k) for k in BackboneOptions.__dataclass_fields__}
    return BACKBONES[name](BackboneOptions(**options), device)


@dataclass
class Conditioning:
    """The UNet rows of one step: [positive (B), unconditional (B), negatives (R)]."""

    embeddings: Tensor  # [2B + R, tokens, features]
    sample_index: Tensor  # [2B + R] long
    neg_index: Tensor  # [R] long, sample of each negative row
    neg_weight: Tensor  # [R]

    @property
    def num_rows(self) -> int:
        return int(self.sample_index.shape[0])


@dataclass
class GuidedNoise:
    eps_hat: Tensor  # [B, ...] fp32
    cond: Conditioning
    coefficient: Tensor  # [R] projection coefficients of the negatives
    variance: Optional[Tensor] = None  # learned variance of the positive rows (IF), when asked


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
    if resolved.own_weights is not None:
        weights, weight_source = resolved.own_weights, "the guidance's perp_neg_* keys"
        # a warning only against weights the user set on the processor (not its defaults)
        if (enabled and processor is not None and processor.weights is not None
                and processor.use_perp_neg and processor_weights(processor.weights) != weights
                and processor_weights(processor.weights) != PERP_NEG_PRESETS[DEFAULT_PRESET]):
            conflicts.append("the guidance's perp_neg_preset / perp_neg_f_* win over the prompt "
                             f"processor's perp_neg_f_* {processor.weights}")
    elif processor is not None and processor.weights is not None:
        weights, weight_source = processor_weights(processor.weights), "the prompt processor's perp_neg_f_*"
    else:
        weights, weight_source = PERP_NEG_PRESETS[DEFAULT_PRESET], f"the {DEFAULT_PRESET} preset"
    state = f"on, weights from {weight_source}" if enabled else "off"
    message = f"Perp-Neg {state} ({source})"
    if conflicts:
        message += "; " + "; ".join(conflicts)
    return PerpNegDecision(enabled, weights, message, bool(conflicts))


class ScoreDistillationGuidance:
    """Callable like a threestudio guidance: returns ``loss_sds``, ``grad_norm`` and diagnostics
    (``loss_sds_img`` with ``use_img_loss``, ``eval`` previews with ``guidance_eval=True``)."""

    def __init__(
        self,
        config: ScoreDistillationConfig,
        device: torch.device,
        backbone: Optional[DiffusionBackbone] = None,
        info: Optional[Callable[[str], None]] = None,
        warn: Optional[Callable[[str], None]] = None,
    ) -> None:
        """``info`` / ``warn`` receive every message, from the configuration-time ones on (the
        threestudio adapter passes threestudio's logger; default: this module's logger)."""
        if backbone is not None and config.backbone is None:  # a given backbone says what it is
            name = next((n for n, kind in BACKBONES.items() if isinstance(backbone, kind)), None)
            config = replace(config, backbone=name)
        self.config = config
        self.resolved = resolve_config(config)  # config errors before any model is loaded
        self.device = torch.device(device)
        self.info: Callable[[str], None] = info or logger.info
        self.warn: Callable[[str], None] = warn or logger.warning
        for message in self.resolved.warnings:
            self.warn(message)
        self.backbone = backbone if backbone is not None else build_backbone(config, self.device,
                                                                             self.resolved.backbone)
        self.alphas_cumprod: Tensor = self.backbone.noise_schedule(config.use_sjc)
        self.num_train_timesteps: int = self.backbone.num_train_timesteps
        self.run_max_steps: Optional[int] = None  # the running trainer's max_steps (adapter)
        self._clip: Optional[ClipSchedule] = None
        self._logged: set = set()
        self._decisions: Dict[Any, PerpNegDecision] = {}
        self._checked_prompts = False
        self._empty_embedding: Optional[Tensor] = None
        self._sampler = None
        self.update_step(0, 0)

    def _once(self, message: str, warning: bool = False) -> None:
        if message not in self._logged:
            self._logged.add(message)
            (self.warn if warning else self.info)(message)

    # -- schedules -------------------------------------------------------------------------
    def schedule_length(self) -> Optional[Tuple[int, str]]:
        """The run length the schedules stretch over, and where it came from."""
        if self.config.trainer_max_steps is not None:
            return int(self.config.trainer_max_steps), "trainer_max_steps"
        if self.run_max_steps is not None:
            return int(self.run_max_steps), "trainer.max_steps of the running trainer"
        return None

    def needs_schedule_length(self) -> bool:
        clip = self.resolved.clip
        return self.config.sqrt_anneal or (clip is not None and clip.needs_length)

    def set_run_max_steps(self, max_steps: int) -> None:
        """The running trainer's ``max_steps`` (the adapter reads it from threestudio's trainer)."""
        if max_steps is None or max_steps <= 0:
            raise ConfigError("clip_end_step", None, f"is not set and the trainer runs without a step "
                              f"limit (trainer.max_steps = {max_steps}); set clip_end_step (and "
                              "trainer_max_steps for sqrt_anneal)")
        self.run_max_steps = int(max_steps)

    def require_schedule_length(self) -> Tuple[int, str]:
        length = self.schedule_length()
        if length is None:
            key = "clip_end_step" if self.resolved.clip is not None and self.resolved.clip.needs_length \
                else "trainer_max_steps"
            raise ConfigError(key, None, "is not set and the run's trainer.max_steps is unknown (no "
                              "Lightning trainer is running): set clip_end_step / trainer_max_steps, "
                              "e.g. clip_end_step: ${trainer.max_steps} in the config")
        return length

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        c = self.config
        self._step = (epoch, global_step)
        length = self.schedule_length()
        self._stale = self.needs_schedule_length() and length is None
        min_percent = scalar_schedule(c.min_step_percent, epoch, global_step)
        max_percent = scalar_schedule(c.max_step_percent, epoch, global_step)
        if c.sqrt_anneal:
            steps = length[0] if length is not None else 1  # (stale: recomputed before use)
            min_percent = max_percent = sqrt_annealed_percent(global_step, steps, min_percent, max_percent)
        self.set_min_max_steps(min_percent, max_percent)
        self.grad_clip_value: Optional[float] = (
            None if c.grad_clip is None else scalar_schedule(c.grad_clip, epoch, global_step)
        )
        # D-SDS: psi(step), a pure function of the global step (resumes clip identically)
        self.clip_threshold: Optional[float] = None
        clip = self.resolved.clip
        if clip is not None and (not clip.needs_length or length is not None):
            if self._clip is None:
                self._clip = clip.schedule(None if length is None else length[0])
            self.clip_threshold = self._clip(global_step)
        if not self._stale:
            self.log_schedules()

    def log_schedules(self) -> None:
        """The D-SDS clip schedule and the sqrt-anneal length, once, when they are known."""
        length = self.schedule_length()
        if self._clip is not None:
            self._once(self.resolved.clip.describe(self._clip, self.config.use_sjc,
                                                   length[1] if length else ""))
        if self.config.sqrt_anneal and length is not None:
            self._once(f"sqrt_anneal over {length[0]} steps ({length[1]})")

    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98) -> None:
        """threestudio's ``set_min_max_steps``: t ~ U[int(T min), int(T max)]."""
        if not 0.0 <= min_step_percent <= max_step_percent < 1.0:
            raise ConfigError("min_step_percent", min_step_percent,
                              f"and max_step_percent ({max_step_percent}) must satisfy "
                              "0 <= min <= max < 1")
        self.min_step, self.max_step = timestep_range(
            self.num_train_timesteps, min_step_percent, max_step_percent
        )

    # -- conditioning ----------------------------------------------------------------------
    def empty_embedding(self, prompt_utils: Any) -> Tensor:
        provided = empty_prompt_embeddings(prompt_utils)
        if provided is not None:
            return provided.reshape(1, *provided.shape[-2:])
        if self._empty_embedding is None:
            self.info("Encoding the empty prompt for negative_prompt_weight > 0 (once).")
            self._empty_embedding = self.backbone.encode_prompts([""])[:1]
        return self._empty_embedding

    def perp_neg(self, prompt_utils: Any) -> PerpNegDecision:
        processor = processor_perp_neg(prompt_utils)  # the decision depends only on these values
        key = None if processor is None else (processor.use_perp_neg, str(processor.weights))
        if key not in self._decisions:
            self._decisions[key] = decide_perp_neg(self.config, self.resolved, prompt_utils)
        decision = self._decisions[key]
        self._once(decision.message, warning=decision.conflict)
        if decision.enabled and not self.config.view_dependent_prompting:
            raise ConfigError("view_dependent_prompting", False, "Perp-Neg (the prompt processor's "
                              "use_perp_neg: true) needs view-dependent prompts; set perp_neg: false "
                              "or view_dependent_prompting: true", [True])
        return decision

    def check_prompt_output(self, prompt_utils: Any, decision: PerpNegDecision) -> None:
        """First-step checks of what the processor delivered (not knowable at config time)."""
        if self._checked_prompts:
            return
        self._checked_prompts = True
        if self.config.view_dependent_prompting and identical_view_embeddings(prompt_utils):
            prompt = getattr(prompt_utils, "prompt", None)
            problem = ("gives the same text embedding for every view prompt: the view phrase was cut "
                       "off, most likely because the prompt is longer than the text encoder's 77 "
                       "tokens. Shorten the prompt")
            if decision.enabled:
                raise ConfigError("prompt_processor.prompt", prompt,
                                  problem + " (Perp-Neg cannot work without distinct view prompts)")
            self._once(f"config key `prompt_processor.prompt` = {prompt!r}: {problem} "
                       "(view-dependent prompting does nothing)", warning=True)
        if self.config.negative_prompt_weight > 0:
            empty = self.empty_embedding(prompt_utils).to(prompt_utils.uncond_text_embeddings_vd)
            if torch.equal(prompt_utils.uncond_text_embeddings_vd, empty.expand_as(prompt_utils.uncond_text_embeddings_vd)):
                self._once(f"negative_prompt_weight = {self.config.negative_prompt_weight:g} has no "
                           "effect: the prompt processor's negative prompt is empty (set "
                           "system.prompt_processor.negative_prompt)", warning=True)

    def build_conditioning(
        self, prompt_utils: Any, elevation: Tensor, azimuth: Tensor, camera_distances: Tensor,
        decision: Optional[PerpNegDecision] = None,
    ) -> Conditioning:
        c = self.config
        decision = decision or self.perp_neg(prompt_utils)
        batch = elevation.shape[0]
        device = prompt_utils.text_embeddings_vd.device
        sample = torch.arange(batch, device=device)
        if c.view_dependent_prompting:
            direction = direction_indices(prompt_utils, elevation, azimuth, camera_distances).to(device)
            negative_prompt = prompt_utils.uncond_text_embeddings_vd[direction]
        else:
            negative_prompt = prompt_utils.uncond_text_embeddings.expand(batch, -1, -1)

        neg_embeddings: List[Tensor] = []
        neg_index: List[Tensor] = []
        neg_weight: List[Tensor] = []
        if decision.enabled:
            views = ViewEmbeddings.from_prompt_output(prompt_utils)
            is_overhead = views.canonical_of_direction.to(device)[direction] == OVERHEAD
            plan = plan_perp_neg(azimuth.to(device), is_overhead, decision.weights,
                                 self.resolved.overhead_negative)
            mix = plan.positive_mix.to(views.positive.dtype)
            positive = torch.einsum("bv,vtf->btf", mix, views.positive)
            # A view that *is* the positive has e_i_perp = 0 exactly: never evaluate it.
            used = (plan.negative_weight > 0) & (plan.positive_mix < 1.0) & views.available.to(device)
            rows, view = used.nonzero(as_tuple=True)
            neg_embeddings.append(views.positive[view])
            neg_index.append(rows)
            neg_weight.append(plan.negative_weight[rows, view])
        elif c.view_dependent_prompting:
            positive = prompt_utils.text_embeddings_vd[direction]
        else:
            positive = prompt_utils.text_embeddings.expand(batch, -1, -1)

        unconditional = negative_prompt
        if c.negative_prompt_weight > 0:
            # The user's negative prompt becomes a Perp-Neg negative; "" is the unconditional.
            empty = self.empty_embedding(prompt_utils).to(device, negative_prompt.dtype)
            unconditional = empty.expand(batch, -1, -1)
            differs = (negative_prompt != empty).flatten(1).any(1)
            rows = sample[differs]
            neg_embeddings.append(negative_prompt[rows])
            neg_index.append(rows)
            neg_weight.append(torch.full((rows.shape[0],), float(c.negative_prompt_weight), device=device))

        if neg_embeddings:
            negatives = torch.cat(neg_embeddings)
            index = torch.cat(neg_index)
            weight = torch.cat(neg_weight).float()
        else:
            negatives = positive.new_zeros(0, *positive.shape[1:])
            index = sample.new_zeros(0)
            weight = positive.new_zeros(0, dtype=torch.float32)
        return Conditioning(
            embeddings=torch.cat([positive, unconditional, negatives.to(positive.dtype)]),
            sample_index=torch.cat([sample, sample, index]),
            neg_index=index,
            neg_weight=weight,
        )

    def guided_noise(
        self, x_t: Tensor, t: Tensor, prompt_utils: Any, elevation: Tensor, azimuth: Tensor,
        camera_distances: Tensor, decision: Optional[PerpNegDecision] = None,
        with_variance: bool = False,
    ) -> GuidedNoise:
        """eps_hat for noisy inputs x_t [B, ...]: every UNet row in one batched call."""
        batch = x_t.shape[0]
        cond = self.build_conditioning(prompt_utils, elevation, azimuth, camera_distances, decision)
        rows = cond.sample_index.to(x_t.device)
        variance = None
        if with_variance:
            eps_rows, variance_rows = self.backbone.predict_noise_and_variance(x_t[rows], t[rows], cond.embeddings)
            variance = None if variance_rows is None else variance_rows[:batch]
        else:
            eps_rows = self.backbone.predict_noise(x_t[rows], t[rows], cond.embeddings)
        eps_pos, eps_uncond = eps_rows[:batch], eps_rows[batch:2 * batch]
        eps_hat, coefficient = perp_neg_noise(
            eps_uncond, eps_pos, eps_rows[2 * batch:], cond.neg_index.to(x_t.device),
            cond.neg_weight.to(x_t.device), self.resolved.guidance_scale,
        )
        return GuidedNoise(eps_hat, cond, coefficient, variance)

    # -- one step ---------------------------------------------------------------------------
    def __call__(
        self,
        rgb: Tensor,
        prompt_utils: Any,
        elevation: Tensor,
        azimuth: Tensor,
        camera_distances: Tensor,
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        **kwargs: Any,
    ) -> Dict[str, Any]:
        c = self.config
        if self._stale:  # a schedule needed the run length, unknown at the last update_step
            self.require_schedule_length()
            self.update_step(*self._step)
        decision = self.perp_neg(prompt_utils)
        self.check_prompt_output(prompt_utils, decision)

        rgb_bchw = rgb.permute(0, 3, 1, 2)
        image = None
        if c.use_img_loss:
            if rgb_as_latents:
                raise ConfigError("use_img_loss", True, "needs RGB renders, but this system passes "
                                  "latents (rgb_as_latents=True)", [False])
            image = self.backbone.render_to_image(rgb_bchw)
        latents = self.backbone.to_model_space(rgb_bchw, rgb_as_latents)
        batch = latents.shape[0]
        t = torch.randint(self.min_step, self.max_step + 1, [batch], dtype=torch.long,
                          device=latents.device)
        alphas_cumprod_t = self.alphas_cumprod[t]
        noise = torch.randn_like(latents)
        x_t = add_noise(latents.detach(), noise, alphas_cumprod_t)

        guided = self.guided_noise(x_t, t, prompt_utils, elevation, azimuth, camera_distances, decision,
                                   with_variance=guidance_eval)
        eps_hat = guided.eps_hat
        w = sds_weight(alphas_cumprod_t, c.weighting_strategy).view(-1, 1, 1, 1)
        clip = self.resolved.clip
        diagnostics: Dict[str, Any] = {}
        if c.use_sjc:
            grad = sjc_score(eps_hat, noise, c.var_red)  # SJC: no w(t)
        else:
            residual = eps_hat - noise
            if clip is not None and clip.target == "residual":
                residual, diagnostics["dsds/clipped_fraction"] = clip_score(
                    torch.nan_to_num(residual), self.clip_threshold)
            grad = w * residual
        grad = torch.nan_to_num(grad)
        if clip is not None and clip.target == "gradient":
            grad, diagnostics["dsds/clipped_fraction"] = clip_score(grad, self.clip_threshold)  # Eq. (13)
        if clip is not None:
            diagnostics["dsds/clip_threshold"] = float(self.clip_threshold)
        if self.grad_clip_value is not None:
            grad = grad.clamp(-self.grad_clip_value, self.grad_clip_value)

        out: Dict[str, Any] = {
            "loss_sds": sds_loss(latents, grad),
            "grad_norm": grad.norm(),
            **diagnostics,
            "min_step": float(self.min_step),
            "max_step": float(self.max_step),
            "unet_rows": float(guided.cond.num_rows),
            # 0-dim float tensors: logging them needs no device sync here
            "perp_neg/mean_neg_weight": guided.cond.neg_weight.sum() / batch,
            "perp_neg/mean_abs_proj": guided.coefficient.abs().mean() if guided.coefficient.numel()
            else guided.coefficient.new_zeros(()),
        }
        if c.use_img_loss:
            out["loss_sds_img"] = self.image_loss(image, x_t, eps_hat, alphas_cumprod_t, w)
        if guidance_eval:
            out["eval"] = self.previews(x_t, t, with_variance(eps_hat, guided.variance), prompt_utils,
                                        elevation, azimuth, camera_distances, decision)
        return out

    def image_loss(self, image: Tensor, x_t: Tensor, eps_hat: Tensor, alphas_cumprod_t: Tensor,
                   w: Tensor) -> Tensor:
        """HiFA's image-space SDS, as threestudio: the render against the decoded one-step
        estimate, through threestudio's nan_to_num and grad_clip."""
        with torch.no_grad():
            image_denoised = self.backbone.decode_latents(predicted_x0(x_t, eps_hat, alphas_cumprod_t))
        grad_img = image_space_gradient(image, image_denoised.to(image.dtype), w.flatten(), alphas_cumprod_t)
        grad_img = torch.nan_to_num(grad_img)
        if self.grad_clip_value is not None:
            grad_img = grad_img.clamp(-self.grad_clip_value, self.grad_clip_value)
        target = (image - grad_img).detach()
        return 0.5 * F.mse_loss(image, target, reduction="sum") / image.shape[0]

    # -- guidance_eval ----------------------------------------------------------------------
    @torch.no_grad()
    def previews(self, x_t: Tensor, t: Tensor, model_output: Tensor, prompt_utils: Any, elevation: Tensor,
                 azimuth: Tensor, camera_distances: Tensor, decision: PerpNegDecision) -> Dict[str, Any]:
        """threestudio's ``guidance_eval`` output: the noisy input, one sampler step from it, that
        step's x0 estimate and the fully denoised sample (50 sampler steps from t), with texts.
        Every denoising step is this guidance's own (Perp-Neg, per-sample conditioning)."""
        if self._sampler is None:
            self._sampler = self.backbone.make_sampler(self.config.use_sjc)

        def guided(b: int, latents: Tensor, timestep: Tensor) -> Tensor:
            cams = (elevation[b:b + 1], azimuth[b:b + 1], camera_distances[b:b + 1])
            step_t = timestep.reshape(1).to(latents.device, torch.long)
            result = self.guided_noise(latents, step_t, prompt_utils, *cams, decision, with_variance=True)
            return with_variance(result.eps_hat, result.variance)

        batch = x_t.shape[0]
        items = min(self.config.max_items_eval, batch) if self.config.max_items_eval > 0 else batch
        out = denoising_previews(self._sampler, self.backbone.decode_latents, guided, x_t[:items],
                                 model_output[:items], t[:items], self.num_train_timesteps)
        out["texts"] = [f"n{n:.02f}\ne{e.item():.01f}\na{a.item():.01f}\nc{c.item():.02f}"
                        for n, e, a, c in zip(out["noise_levels"], elevation, azimuth, camera_distances)]
        return out


def with_variance(eps: Tensor, variance: Optional[Tensor]) -> Tensor:
    """The sampler's model output: epsilon, and IF's learned variance channels when present."""
    return eps if variance is None else torch.cat([eps, variance], dim=1)
