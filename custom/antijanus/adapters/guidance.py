"""threestudio guidance adapters: thin ``BaseObject`` shells around the one core guidance path
(``antijanus.core.guidance``). Each has threestudio's shape: a ``Config`` dataclass (every key
with its default, see README), ``configure()`` that builds the core object,
``threestudio.register(name)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Type

import threestudio
from threestudio.utils.base import BaseObject

from ..core.guidance import DSDSConfig, ScoreDistillationConfig, ScoreDistillationGuidance
from .registry import core_config, register


class _GuidanceAdapter(BaseObject):
    """Shared shell: both registered guidances run the one core guidance path."""

    core_config_type: Type[ScoreDistillationConfig] = ScoreDistillationConfig
    registered_name = ""

    def configure(self) -> None:
        threestudio.info(f"antijanus: loading {self.cfg.backbone} for {self.registered_name} ...")
        self.engine = ScoreDistillationGuidance(core_config(self.core_config_type, self.cfg), self.device)

    def __call__(self, rgb, prompt_utils, elevation, azimuth, camera_distances,
                 rgb_as_latents: bool = False, guidance_eval: bool = False, **kwargs):
        return self.engine(rgb, prompt_utils, elevation, azimuth, camera_distances,
                           rgb_as_latents=rgb_as_latents, guidance_eval=guidance_eval)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        self.engine.update_step(epoch, global_step, on_load_weights=on_load_weights)


@register("perp-neg-sds-guidance")
class PerpNegSDSGuidance(_GuidanceAdapter):
    """SDS with Perp-Neg view conditioning; D-SDS clipping with ``score_clipping: true``."""

    @dataclass
    class Config(BaseObject.Config, ScoreDistillationConfig):
        pass

    cfg: Config
    core_config_type = ScoreDistillationConfig
    registered_name = "perp-neg-sds-guidance"


@register("dsds-guidance")
class DSDSGuidance(_GuidanceAdapter):
    """SDS with D-SDS dynamic score clipping; Perp-Neg with ``perp_neg: true``."""

    @dataclass
    class Config(BaseObject.Config, DSDSConfig):
        pass

    cfg: Config
    core_config_type = DSDSConfig
    registered_name = "dsds-guidance"
