"""threestudio guidance adapters: thin ``BaseObject`` shells around the one core guidance path
(``antijanus.core.guidance``). Each has threestudio's shape: a ``Config`` dataclass (every key
with its default, see README), ``configure()`` that builds the core object,
``threestudio.register(name)``, and the public methods threestudio's systems call on a guidance
(``encode_images``, ``decode_latents``, ``set_min_max_steps``, ``update_step``, ``__call__`` with
``guidance_eval``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Type

import threestudio
from threestudio.utils.base import BaseModule, BaseObject

from ..backbones import detect_backbone
from ..core.guidance import ScoreDistillationGuidance
from ..core.guidance_config import DSDSConfig, ScoreDistillationConfig, VSDConfig
from ..core.vsd_guidance import VSDGuidance
from .registry import calling_system, core_config, register
from .resumed_run import length_change_warning

#: How far up the call stack to look for the LightningModule that runs this guidance.
TRAINER_SEARCH_DEPTH = 12


def running_trainer(depth: int = TRAINER_SEARCH_DEPTH) -> Optional[Any]:
    """The Lightning trainer running the current step (one with an integer ``max_steps``), if any.

    threestudio hands a guidance only its own config block, but every call into it
    (``update_step`` through the system's ``do_update_step``, ``__call__`` from
    ``training_step``) comes from a threestudio system, a LightningModule whose ``_trainer`` is
    the running trainer: the nearest caller with one (a few frames up).
    """
    system = calling_system(lambda owner: isinstance(_max_steps_of(owner), int), depth)
    return None if system is None else system._trainer


def _max_steps_of(owner) -> Any:
    return getattr(getattr(owner, "_trainer", None), "max_steps", None)


class _GuidanceMethods:
    """Shared shell: every registered guidance runs the one core guidance path (``engine``)."""

    core_config_type: Type[ScoreDistillationConfig] = ScoreDistillationConfig
    engine_type: Type[ScoreDistillationGuidance] = ScoreDistillationGuidance
    registered_name = ""

    def configure(self) -> None:
        config = core_config(self.core_config_type, self.cfg)
        backbone = config.backbone or detect_backbone(config.pretrained_model_name_or_path)
        threestudio.info(f"antijanus: loading {backbone} for {self.registered_name} ...")
        # every message, the configuration-time ones included, through threestudio's logger
        self.engine = self.engine_type(
            config, self.device,
            info=lambda message: threestudio.info(f"antijanus: {message}"),
            warn=lambda message: threestudio.warn(f"antijanus: {message}"))

    def _learn_run_length(self, global_step: int) -> None:
        """The clip schedule / sqrt_anneal stretch over the run's real trainer.max_steps unless
        clip_end_step / trainer_max_steps say otherwise; a resumed run whose trainer.max_steps
        differs from the run it resumes is said once (resumed_run.py)."""
        engine = self.engine
        if engine.needs_schedule_length() and engine.schedule_length() is None:
            trainer = running_trainer()
            if trainer is not None:
                engine.set_run_max_steps(trainer.max_steps)
                self._warn_changed_length(getattr(trainer, "ckpt_path", None), trainer.max_steps, global_step)

    def _warn_changed_length(self, ckpt_path, max_steps: int, global_step: int) -> None:
        clip = self.engine.resolved.clip
        uses_clip = clip is not None and clip.needs_length
        threshold = (lambda length, step: clip.schedule(length)(step)) if uses_clip else None
        message = length_change_warning(ckpt_path, max_steps, uses_clip, global_step, threshold)
        if message:
            threestudio.warn(f"antijanus: {message}")

    def __call__(self, rgb, prompt_utils, elevation, azimuth, camera_distances,
                 rgb_as_latents: bool = False, guidance_eval: bool = False, **kwargs):
        self._learn_run_length(self.engine.current_step)
        return self.engine(rgb, prompt_utils, elevation, azimuth, camera_distances,
                           rgb_as_latents=rgb_as_latents, guidance_eval=guidance_eval,
                           **self.step_inputs(kwargs))

    def step_inputs(self, batch: dict) -> dict:
        """What the engine takes from the rest of the system's batch (SDS: nothing)."""
        return {}

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        self._learn_run_length(global_step)
        self.engine.update_step(epoch, global_step, on_load_weights=on_load_weights)

    # -- threestudio's public guidance methods ----------------------------------------------
    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98):
        self.engine.set_min_max_steps(min_step_percent, max_step_percent)

    def encode_images(self, imgs):
        """[B, 3, H, W] images in [0, 1] -> model space (SD: VAE latents; IF: [-1, 1] pixels)."""
        return self.engine.backbone.encode_images(imgs)

    def decode_latents(self, latents, latent_height: Optional[int] = None,
                       latent_width: Optional[int] = None):
        """Model space -> [B, 3, H, W] images in [0, 1]; latents are first resized to
        (latent_height, latent_width), default the model's latent size (64, threestudio's)."""
        return self.engine.backbone.decode_latents(latents, latent_height, latent_width)

    # attributes threestudio's guidances expose
    @property
    def min_step(self) -> int:
        return self.engine.min_step

    @property
    def max_step(self) -> int:
        return self.engine.max_step

    @property
    def num_train_timesteps(self) -> int:
        return self.engine.num_train_timesteps

    @property
    def alphas(self):
        return self.engine.alphas_cumprod

    @property
    def grad_clip_val(self) -> Optional[float]:
        return self.engine.grad_clip_value

    @property
    def weights_dtype(self):
        return self.engine.backbone.dtype


class _GuidanceAdapter(_GuidanceMethods, BaseObject):
    """The SDS-path guidances: threestudio ``BaseObject``s (no trainable weights)."""


@register("perp-neg-sds-guidance")
class PerpNegSDSGuidance(_GuidanceAdapter):
    """SDS (or SJC) with Perp-Neg view conditioning; D-SDS clipping with ``score_clipping: true``."""

    @dataclass
    class Config(BaseObject.Config, ScoreDistillationConfig):
        pass

    cfg: Config
    core_config_type = ScoreDistillationConfig
    registered_name = "perp-neg-sds-guidance"


@register("dsds-guidance")
class DSDSGuidance(_GuidanceAdapter):
    """SDS (or SJC) with D-SDS dynamic score clipping; Perp-Neg with ``perp_neg: true``."""

    @dataclass
    class Config(BaseObject.Config, DSDSConfig):
        pass

    cfg: Config
    core_config_type = DSDSConfig
    registered_name = "dsds-guidance"


@register("perp-neg-vsd-guidance")
class PerpNegVSDGuidance(_GuidanceMethods, BaseModule):
    """VSD (ProlificDreamer), drop-in for threestudio's ``stable-diffusion-vsd-guidance``:
    Perp-Neg on the pretrained branch (the processor's ``use_perp_neg``), D-SDS clipping with
    ``score_clipping: true``. A threestudio ``BaseModule`` like threestudio's: its parameters and
    state dict are the LoRA (``lora_layers``) and the camera embedding (``camera_embedding``), under
    threestudio's names, so the system's optimizer group ``guidance`` trains them and checkpoints
    save and resume them; the diffusion model is not part of them."""

    @dataclass
    class Config(BaseModule.Config, VSDConfig):
        pass

    cfg: Config
    core_config_type = VSDConfig
    engine_type = VSDGuidance
    registered_name = "perp-neg-vsd-guidance"

    def configure(self) -> None:
        super().configure()
        self.lora_layers = self.engine.lora.lora
        self.camera_embedding = self.engine.lora.camera

    def step_inputs(self, batch: dict) -> dict:
        return {key: batch.get(key) for key in ("mvp_mtx", "c2w")}

    def sample(self, prompt_utils, elevation, azimuth, camera_distances, seed: int = 0, **kwargs):
        """threestudio's ``sample`` (``system.visualize_samples``): [B, H, W, 3] images in [0, 1]
        from the pretrained model, 25 DPM-Solver++ steps, the path's CFG (Perp-Neg when on)."""
        return self.engine.sample(prompt_utils, elevation, azimuth, camera_distances, seed=seed)

    def sample_lora(self, prompt_utils, elevation, azimuth, camera_distances, mvp_mtx=None, c2w=None,
                    seed: int = 0, **kwargs):
        """threestudio's ``sample_lora``: [B, H, W, 3] images in [0, 1] from the LoRA model with the
        batch's camera (``camera_condition_type``) and ``guidance_scale_lora``."""
        return self.engine.sample_lora(prompt_utils, self.engine.camera(mvp_mtx, c2w), seed=seed)
