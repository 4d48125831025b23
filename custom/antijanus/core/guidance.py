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

The configuration (its keys, their checks, Perp-Neg on or off) is ``guidance_config.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones import BACKBONES
from ..backbones.base import BackboneOptions, DiffusionBackbone
from ..utils.errors import ConfigError
from .dsds import ClipSchedule, clip_score
from .finite_check import FiniteWatch, NonFiniteStepError, likely_suspects
from .guidance_config import (DSDSConfig, PerpNegDecision, ScoreDistillationConfig, config_warnings,
                              decide_perp_neg, resolve_config)
from .perp_neg import perp_neg_noise
from .preview import denoising_previews
from .prompts import (ViewEmbeddings, direction_indices, empty_prompt_embeddings,
                      identical_view_embeddings, processor_perp_neg)
from .sds import (
    add_noise,
    image_space_gradient,
    predicted_x0,
    scalar_schedule,
    sds_loss,
    sds_weight,
    sqrt_annealed_percent,
    timestep_range,
)
from .sjc import sjc_score
from .views import OVERHEAD, PerpNegWeights, plan_perp_neg

# With the configuration's names (guidance_config.py), which the lab and tools import from here.
__all__ = ["ScoreDistillationGuidance", "ScoreDistillationConfig", "DSDSConfig", "resolve_config",
           "decide_perp_neg", "config_warnings", "Conditioning", "GuidedNoise", "with_variance"]

logger = logging.getLogger(__name__)


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


#: Negative rows: embeddings [R, tokens, features], sample of each [R] long, weight [R].
NegativeRows = Tuple[Tensor, Tensor, Tensor]


def perp_neg_rows(views: ViewEmbeddings, direction: Tensor, azimuth: Tensor, weights: PerpNegWeights,
                  overhead_negative: tuple) -> Tuple[Tensor, NegativeRows]:
    """Perp-Neg's interpolated positive [B, tokens, features] and its negative view rows."""
    device = direction.device
    is_overhead = views.canonical_of_direction.to(device)[direction] == OVERHEAD
    plan = plan_perp_neg(azimuth.to(device), is_overhead, weights, overhead_negative)
    mix = plan.positive_mix.to(views.positive.dtype)
    positive = torch.einsum("bv,vtf->btf", mix, views.positive)
    # A view that *is* the positive has e_i_perp = 0 exactly: never evaluate it.
    used = (plan.negative_weight > 0) & (plan.positive_mix < 1.0) & views.available.to(device)
    rows, view = used.nonzero(as_tuple=True)
    return positive, (views.positive[view], rows, plan.negative_weight[rows, view])


def negative_prompt_rows(negative_prompt: Tensor, empty: Tensor, weight: float) -> NegativeRows:
    """The user's negative prompt [B, tokens, features] as a Perp-Neg negative of each sample
    whose negative prompt is not the empty one [1, tokens, features]."""
    differs = (negative_prompt != empty).flatten(1).any(1)
    rows = torch.arange(negative_prompt.shape[0], device=negative_prompt.device)[differs]
    return negative_prompt[rows], rows, torch.full((rows.shape[0],), float(weight), device=rows.device)


def assemble_conditioning(positive: Tensor, unconditional: Tensor, negatives: List[NegativeRows]
                          ) -> Conditioning:
    """[positive (B), unconditional (B), negatives (R)], each row with its sample."""
    sample = torch.arange(positive.shape[0], device=positive.device)
    if negatives:
        embeddings, index, weight = (torch.cat(part) for part in zip(*negatives))
        weight = weight.float()
    else:
        embeddings = positive.new_zeros(0, *positive.shape[1:])
        index = sample.new_zeros(0)
        weight = positive.new_zeros(0, dtype=torch.float32)
    return Conditioning(
        embeddings=torch.cat([positive, unconditional, embeddings.to(positive.dtype)]),
        sample_index=torch.cat([sample, sample, index]),
        neg_index=index,
        neg_weight=weight,
    )


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
        self._finite = FiniteWatch()
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

    @property
    def current_step(self) -> int:
        """The global step of the last ``update_step``."""
        return self._step[1]

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
                                                   length[1] if length else "", self.METHOD))
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
        if c.view_dependent_prompting:
            direction = direction_indices(prompt_utils, elevation, azimuth, camera_distances).to(device)
            negative_prompt = prompt_utils.uncond_text_embeddings_vd[direction]
        else:
            negative_prompt = prompt_utils.uncond_text_embeddings.expand(batch, -1, -1)

        negatives: List[NegativeRows] = []
        if decision.enabled:
            positive, rows = perp_neg_rows(ViewEmbeddings.from_prompt_output(prompt_utils), direction,
                                           azimuth, decision.weights, self.resolved.overhead_negative)
            negatives.append(rows)
        elif c.view_dependent_prompting:
            positive = prompt_utils.text_embeddings_vd[direction]
        else:
            positive = prompt_utils.text_embeddings.expand(batch, -1, -1)

        unconditional = negative_prompt
        if c.negative_prompt_weight > 0:
            # The user's negative prompt becomes a Perp-Neg negative; "" is the unconditional.
            empty = self.empty_embedding(prompt_utils).to(device, negative_prompt.dtype)
            unconditional = empty.expand(batch, -1, -1)
            negatives.append(negative_prompt_rows(negative_prompt, empty, c.negative_prompt_weight))
        return assemble_conditioning(positive, unconditional, negatives)

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
        decision = self.begin_step(prompt_utils)
        latents, image = self.model_inputs(rgb, rgb_as_latents)
        batch = latents.shape[0]
        t = torch.randint(self.min_step, self.max_step + 1, [batch], dtype=torch.long,
                          device=latents.device)
        alphas_cumprod_t = self.alphas_cumprod[t]
        noise = torch.randn_like(latents)
        x_t = add_noise(latents.detach(), noise, alphas_cumprod_t)

        guided = self.guided_noise(x_t, t, prompt_utils, elevation, azimuth, camera_distances, decision,
                                   with_variance=guidance_eval)
        w = sds_weight(alphas_cumprod_t, c.weighting_strategy).view(-1, 1, 1, 1)
        grad, diagnostics = self.score_gradient(guided.eps_hat, noise, w)

        out: Dict[str, Any] = {
            "loss_sds": sds_loss(latents, grad),
            "grad_norm": grad.norm(),
            **diagnostics,
            **self.step_diagnostics(guided, batch, guided.cond.num_rows),
        }
        if c.use_img_loss:
            out["loss_sds_img"] = self.image_loss(image, x_t, guided.eps_hat, alphas_cumprod_t, w)
        if guidance_eval:
            model_output = with_variance(guided.eps_hat, guided.variance)
            out["eval"] = self.previews(x_t, t, model_output, prompt_utils, elevation, azimuth,
                                        camera_distances, decision)
        self.check_finite(rgb, out)
        return out

    def begin_step(self, prompt_utils: Any) -> PerpNegDecision:
        """The schedules brought up to date, Perp-Neg decided, the prompts checked (once)."""
        if self._stale:  # a schedule needed the run length, unknown at the last update_step
            self.require_schedule_length()
            self.update_step(*self._step)
        decision = self.perp_neg(prompt_utils)
        self.check_prompt_output(prompt_utils, decision)
        return decision

    #: The outputs a step checks for non-finite values (with the renders).
    METHOD = "sds"  # what the step distils: "sds" (SDS or SJC) or "vsd" (VSDGuidance)
    FINITE_KEYS: Tuple[str, ...] = ("loss_sds", "grad_norm", "loss_sds_img")

    def step_diagnostics(self, guided, batch: int, unet_rows: int) -> Dict[str, Any]:
        """The step range, the UNet rows and Perp-Neg's weights of a step, as every path logs them."""
        return {
            "min_step": float(self.min_step),
            "max_step": float(self.max_step),
            "unet_rows": float(unet_rows),
            # 0-dim float tensors: logging them needs no device sync here
            "perp_neg/mean_neg_weight": guided.cond.neg_weight.sum() / batch,
            "perp_neg/mean_abs_proj": guided.coefficient.abs().mean() if guided.coefficient.numel()
            else guided.coefficient.new_zeros(()),
        }

    def check_finite(self, rgb: Tensor, out: Dict[str, Any]) -> None:
        """A step whose renders, loss or gradient norm are not finite stops the run, without a
        device sync: on a GPU the step is checked once the GPU has finished it (finite_check.py)."""
        values = {"rgb": rgb, **{k: out[k] for k in self.FINITE_KEYS if k in out}}
        self._finite.record(self._step[1], values)
        bad = self._finite.first_bad()
        if bad is not None:
            raise NonFiniteStepError(bad[0], bad[1], likely_suspects(
                bad[1], self.resolved.guidance_scale, self.config.half_precision_weights,
                self.resolved.unusual_keys))

    def model_inputs(self, rgb: Tensor, rgb_as_latents: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """Renders [B, H, W, C] -> the model's x_0 (fp32), and HiFA's image when use_img_loss."""
        rgb_bchw = rgb.permute(0, 3, 1, 2)
        image = None
        if self.config.use_img_loss:
            if rgb_as_latents:
                raise ConfigError("use_img_loss", True, "needs RGB renders, but this system passes "
                                  "latents (rgb_as_latents=True)", [False])
            image = self.backbone.render_to_image(rgb_bchw)
        return self.backbone.to_model_space(rgb_bchw, rgb_as_latents), image

    def score_gradient(self, eps_hat: Tensor, noise: Tensor, w: Tensor) -> Tuple[Tensor, Dict[str, Any]]:
        """The gradient of the step (SDS's w(t)(eps_hat - eps) or SJC's score), D-SDS-clipped and
        clamped by grad_clip, with the clipping diagnostics."""
        clip = self.resolved.clip
        diagnostics: Dict[str, Any] = {}
        if self.config.use_sjc:
            grad = sjc_score(eps_hat, noise, self.config.var_red)  # SJC: no w(t)
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
        return grad, diagnostics

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
