"""The one score-distillation guidance path: SDS with Perp-Neg view conditioning.

One step, for rendered images x and cameras (elevation, azimuth):

    x_t      = sqrt(abar_t) x + sqrt(1 - abar_t) eps,   t ~ U[min_step, max_step]
    eps_hat  = eps_unc + s * (e_pos - sum_i w_i e_i_perp)       (Perp-Neg, perp_neg.py)
    grad     = w(t) * (eps_hat - eps)                           (SDS, sds.py)

All UNet rows of a step (positive, unconditional and the negatives that are actually used, for
every sample) go through the backbone in one batched call; each row carries the index of its
sample, so negatives are always paired with their own sample's noisy latent (threestudio's
built-in Perp-Neg pairs them wrongly for batch > 1, its issue 456).

CFG form: every mode uses the paper's eps_unc + s * (...). threestudio's plain SDS uses
eps_text + s * (eps_text - eps_unc) = eps_unc + (s + 1) * e_pos; to reproduce it exactly with
``perp_neg: false``, set guidance_scale to s + 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from ..backbones import BACKBONES
from ..backbones.base import BackboneOptions, DiffusionBackbone
from .dsds import CLIP_TARGETS, ClipSchedule, clip_score, schedule_from_config
from ..utils.errors import ConfigError, require_choice, require_non_negative, require_positive
from .perp_neg import perp_neg_noise
from .prompts import ViewEmbeddings, direction_indices, empty_prompt_embeddings
from .sds import (
    WEIGHTING_STRATEGIES,
    add_noise,
    check_schedule,
    scalar_schedule,
    sds_loss,
    sds_weight,
    sqrt_annealed_percent,
    timestep_range,
)
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


@dataclass
class ScoreDistillationConfig(BackboneOptions):
    """Every key of the guidance, with its default. Keys shared with threestudio's
    ``stable-diffusion-guidance`` keep its names and meaning. ``None`` defaults take the
    backbone's value (Stable Diffusion / DeepFloyd IF)."""

    backbone: str = "stable-diffusion"
    guidance_scale: Optional[float] = None  # SD 100, IF 20
    weighting_strategy: str = "sds"
    min_step_percent: Any = 0.02  # a number or a threestudio schedule list
    max_step_percent: Any = 0.98
    sqrt_anneal: bool = False  # HiFA: t/T from max to min as sqrt(step / trainer_max_steps)
    trainer_max_steps: int = 25000
    grad_clip: Optional[Any] = None  # clamp of the final SDS gradient w(t)(eps_hat - eps)
    view_dependent_prompting: bool = True

    # Perp-Neg
    perp_neg: bool = True
    perp_neg_preset: str = "threestudio"
    perp_neg_f_sb: Optional[List[float]] = None  # [a, b, c] or [a, b, c, cutoff]
    perp_neg_f_fsb: Optional[List[float]] = None
    perp_neg_f_fs: Optional[List[float]] = None
    perp_neg_f_sf: Optional[List[float]] = None
    overhead_negatives: Dict[str, float] = field(default_factory=dict)
    negative_prompt_weight: float = 0.0

    # D-SDS dynamic score clipping (dsds.py)
    score_clipping: bool = False
    clip_schedule: str = "linear"  # linear | constant | cosine
    clip_start: Optional[float] = None  # SD 2.0, IF 0.5
    clip_end: Optional[float] = None  # SD 8.0, IF 2.0
    clip_start_step: int = 0
    clip_end_step: Optional[int] = None  # None: trainer_max_steps
    clip_target: str = "residual"  # residual: eps_hat - eps (the paper); gradient: w(t)(eps_hat - eps)

    # Accepted so stable-diffusion-guidance configs load unchanged; only defaults are allowed.
    enable_sequential_cpu_offload: bool = False
    use_sjc: bool = False
    var_red: bool = True
    use_img_loss: bool = False
    max_items_eval: int = 4


@dataclass
class DSDSConfig(ScoreDistillationConfig):
    """`dsds-guidance`: the same guidance with D-SDS score clipping on and Perp-Neg off by
    default; set ``perp_neg: true`` to combine both (or use `perp-neg-sds-guidance` with
    ``score_clipping: true``, which is the same thing)."""

    perp_neg: bool = False
    score_clipping: bool = True


UNSUPPORTED_FLAGS = ("enable_sequential_cpu_offload", "use_sjc", "use_img_loss")


@dataclass(frozen=True)
class ResolvedConfig:
    guidance_scale: float
    weights: PerpNegWeights
    overhead_negative: tuple
    clip: Optional[ClipSchedule]


def resolve_config(config: ScoreDistillationConfig) -> ResolvedConfig:
    """Check every key (raising ConfigError that names it) and resolve the weight functions."""
    require_choice("backbone", config.backbone, BACKBONES)
    backbone = BACKBONES[config.backbone]
    guidance_scale = backbone.DEFAULT_GUIDANCE_SCALE if config.guidance_scale is None else config.guidance_scale
    require_positive("guidance_scale", guidance_scale)
    require_choice("weighting_strategy", config.weighting_strategy, WEIGHTING_STRATEGIES)
    check_schedule("min_step_percent", config.min_step_percent, 0.0, 1.0)
    check_schedule("max_step_percent", config.max_step_percent, 0.0, 1.0)
    if isinstance(config.min_step_percent, (int, float)) and isinstance(
        config.max_step_percent, (int, float)
    ) and config.min_step_percent > config.max_step_percent:
        raise ConfigError("min_step_percent", config.min_step_percent,
                          f"must be <= max_step_percent ({config.max_step_percent})")
    require_positive("trainer_max_steps", config.trainer_max_steps)
    if config.grad_clip is not None:
        check_schedule("grad_clip", config.grad_clip, 0.0, float("inf"))
    for flag in UNSUPPORTED_FLAGS:
        if getattr(config, flag):
            raise ConfigError(flag, True, "is not supported by this guidance", [False])
    require_choice("perp_neg_preset", config.perp_neg_preset, PERP_NEG_PRESETS)
    require_non_negative("negative_prompt_weight", config.negative_prompt_weight)
    if config.perp_neg and not config.view_dependent_prompting:
        raise ConfigError("view_dependent_prompting", False,
                          "Perp-Neg needs view-dependent prompts (or set perp_neg: false)", [True])
    preset = PERP_NEG_PRESETS[config.perp_neg_preset]
    functions = {}
    for key in WEIGHT_FUNCTIONS:
        value = getattr(config, key)
        name = key[len("perp_neg_"):]
        functions[name] = getattr(preset, name) if value is None else DecayWeight.from_config(key, value)
    clip = None
    if config.score_clipping:
        require_choice("clip_target", config.clip_target, CLIP_TARGETS)
        default_start, default_end = backbone.DEFAULT_CLIP
        clip = schedule_from_config(
            config.clip_schedule,
            default_start if config.clip_start is None else config.clip_start,
            default_end if config.clip_end is None else config.clip_end,
            config.clip_start_step, config.clip_end_step, config.trainer_max_steps,
        )
    return ResolvedConfig(
        guidance_scale=float(guidance_scale),
        weights=PerpNegWeights(**functions),
        overhead_negative=overhead_negative_vector(config.overhead_negatives),
        clip=clip,
    )


def build_backbone(config: ScoreDistillationConfig, device: torch.device) -> DiffusionBackbone:
    options = {k: getattr(config, k) for k in BackboneOptions.__dataclass_fields__}
    return BACKBONES[config.backbone](BackboneOptions(**options), device)


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


class ScoreDistillationGuidance:
    """Callable like a threestudio guidance: returns ``loss_sds``, ``grad_norm`` and diagnostics."""

    def __init__(
        self,
        config: ScoreDistillationConfig,
        device: torch.device,
        backbone: Optional[DiffusionBackbone] = None,
    ) -> None:
        self.config = config
        self.resolved = resolve_config(config)  # config errors before any model is loaded
        self.device = torch.device(device)
        self.backbone = backbone if backbone is not None else build_backbone(config, self.device)
        self._empty_embedding: Optional[Tensor] = None
        self._warned_eval = False
        self.update_step(0, 0)

    # -- schedules -------------------------------------------------------------------------
    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        c = self.config
        min_percent = scalar_schedule(c.min_step_percent, epoch, global_step)
        max_percent = scalar_schedule(c.max_step_percent, epoch, global_step)
        if c.sqrt_anneal:
            min_percent = max_percent = sqrt_annealed_percent(
                global_step, c.trainer_max_steps, min_percent, max_percent
            )
        self.min_step, self.max_step = timestep_range(
            self.backbone.num_train_timesteps, min_percent, max_percent
        )
        self.grad_clip_value: Optional[float] = (
            None if c.grad_clip is None else scalar_schedule(c.grad_clip, epoch, global_step)
        )
        # D-SDS: psi(step), a pure function of the global step (resumes clip identically)
        self.clip_threshold: Optional[float] = (
            None if self.resolved.clip is None else self.resolved.clip(global_step)
        )

    # -- conditioning ----------------------------------------------------------------------
    def empty_embedding(self, prompt_utils: Any) -> Tensor:
        provided = empty_prompt_embeddings(prompt_utils)
        if provided is not None:
            return provided.reshape(1, *provided.shape[-2:])
        if self._empty_embedding is None:
            logger.info("Encoding the empty prompt for negative_prompt_weight > 0 (once).")
            self._empty_embedding = self.backbone.encode_prompts([""])[:1]
        return self._empty_embedding

    def build_conditioning(
        self, prompt_utils: Any, elevation: Tensor, azimuth: Tensor, camera_distances: Tensor
    ) -> Conditioning:
        c = self.config
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
        if c.perp_neg:
            views = ViewEmbeddings.from_prompt_output(prompt_utils)
            is_overhead = views.canonical_of_direction.to(device)[direction] == OVERHEAD
            plan = plan_perp_neg(azimuth.to(device), is_overhead, self.resolved.weights,
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
        camera_distances: Tensor,
    ):
        """eps_hat for noisy inputs x_t [B, ...]: every UNet row in one batched call."""
        batch = x_t.shape[0]
        cond = self.build_conditioning(prompt_utils, elevation, azimuth, camera_distances)
        rows = cond.sample_index.to(x_t.device)
        eps_rows = self.backbone.predict_noise(x_t[rows], t[rows], cond.embeddings)
        eps_pos, eps_uncond = eps_rows[:batch], eps_rows[batch:2 * batch]
        eps_hat, coefficient = perp_neg_noise(
            eps_uncond, eps_pos, eps_rows[2 * batch:], cond.neg_index.to(x_t.device),
            cond.neg_weight.to(x_t.device), self.resolved.guidance_scale,
        )
        return eps_hat, cond, coefficient

    # -- one SDS step ----------------------------------------------------------------------
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
        if guidance_eval and not self._warned_eval:
            logger.warning("guidance_eval is not implemented by this guidance; ignored.")
            self._warned_eval = True
        latents = self.backbone.to_model_space(rgb.permute(0, 3, 1, 2), rgb_as_latents)
        batch = latents.shape[0]
        t = torch.randint(self.min_step, self.max_step + 1, [batch], dtype=torch.long,
                          device=latents.device)
        alphas_cumprod_t = self.backbone.alphas_cumprod[t]
        noise = torch.randn_like(latents)
        x_t = add_noise(latents.detach(), noise, alphas_cumprod_t)

        eps_hat, cond, coefficient = self.guided_noise(
            x_t, t, prompt_utils, elevation, azimuth, camera_distances
        )

        w = sds_weight(alphas_cumprod_t, self.config.weighting_strategy).view(-1, 1, 1, 1)
        residual = torch.nan_to_num(eps_hat - noise)
        diagnostics: Dict[str, Any] = {}
        if self.clip_threshold is not None and self.config.clip_target == "residual":
            residual, fraction = clip_score(residual, self.clip_threshold)  # D-SDS Eq. (13)
        grad = w * residual
        if self.clip_threshold is not None and self.config.clip_target == "gradient":
            grad, fraction = clip_score(grad, self.clip_threshold)
        if self.clip_threshold is not None:
            diagnostics = {"dsds/clip_threshold": self.clip_threshold, "dsds/clipped_fraction": fraction}
        if self.grad_clip_value is not None:
            grad = grad.clamp(-self.grad_clip_value, self.grad_clip_value)

        return {
            **diagnostics,
            "loss_sds": sds_loss(latents, grad),
            "grad_norm": grad.norm(),
            "min_step": self.min_step,
            "max_step": self.max_step,
            "unet_rows": cond.num_rows,
            # 0-dim tensors: logging them needs no device sync here
            "perp_neg/mean_neg_weight": cond.neg_weight.sum() / batch,
            "perp_neg/mean_abs_proj": coefficient.abs().mean() if coefficient.numel()
            else coefficient.new_zeros(()),
        }
