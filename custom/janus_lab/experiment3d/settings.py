"""The fast path's run settings (``FastSettings``), its camera presets, and the representation
every variant shares (``Representation``, from REPRESENTATION_CONFIG)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from antijanus.core.guidance import ScoreDistillationConfig
from antijanus.utils.errors import ConfigError

from ..data import WorldBias
from ..fast3d import (LAB_LATENT_RESOLUTION, LAB_RESOLUTION, CameraSettings, Material, SystemSettings, VolumeSettings,
                      VSDSettings)
from .variants import REPRESENTATION_CONFIG, Variant, block, guidance_config, load_config

# "configs": threestudio's cameras from REPRESENTATION_CONFIG; "prior": framed as the prior's
# world photographs (``prior_framed``)
CAMERA_PRESETS = ("configs", "prior")


@dataclass(frozen=True)
class FastSettings:
    """The fast path's run settings, the same for every variant; the defaults are the
    calibration's choice (README, "The 3D experiment"). Every field is part of the experiment key."""

    steps: int = 600  # training steps per run
    lr: float = 0.1  # the volume's Adam learning rate (the background keeps the config's)
    # threestudio's Latent-NeRF at the prior's latent size
    volume: VolumeSettings = VolumeSettings(resolution=24, features="latent")
    guidance_scale: Optional[float] = None  # every variant's alike (None: each config's own, SD's 100)
    cameras: str = "configs"  # the training and test cameras, one of CAMERA_PRESETS
    orbit_views: int = 36  # azimuths 0, 10, ..., 350
    orbit_elevation: float = 15.0  # threestudio's eval_elevation_deg default (the NeRF configs keep it)
    threads: int = 1  # torch threads per run (runs go in parallel with --jobs)

    def __post_init__(self) -> None:
        scale = self.guidance_scale
        if scale is not None and not _finite_number(scale, 0.0):
            raise ConfigError("guidance_scale", scale, "a finite scale > 0, or None for each config's own")
        if self.cameras not in CAMERA_PRESETS:
            raise ConfigError("cameras", self.cameras, "the 3D runs' cameras", list(CAMERA_PRESETS))
        for key, minimum in (("steps", 1), ("threads", 1), ("orbit_views", 2)):  # an orbit: two azimuths at least
            _require_integer(key, getattr(self, key), minimum)
        if not _finite_number(self.lr, 0.0):
            raise ConfigError("lr", self.lr, "a finite learning rate > 0")
        if not (_finite_number(self.orbit_elevation) and -90.0 <= self.orbit_elevation <= 90.0):
            raise ConfigError("orbit_elevation", self.orbit_elevation, "an elevation in degrees, in [-90, 90]")

    def to_dict(self) -> Dict[str, Any]:
        """Every setting (the experiment key's part)."""
        return dataclasses.asdict(self)


def _finite_number(value: Any, above: float = -math.inf) -> bool:
    """A finite number (not a bool) greater than ``above``."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > above)


def _require_integer(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"an integer >= {minimum}")


def variant_guidance(variant: Variant, settings: FastSettings, prior: str) -> ScoreDistillationConfig:
    """The variant's guidance config for a run of ``settings`` (its steps; the shared guidance
    scale, when set, in place of the config's: for VSD the pretrained branch's CFG scale, the LoRA
    branch's ``guidance_scale_lora`` kept)."""
    config = guidance_config(load_config(variant.config, variant.overrides, settings.steps), prior)
    if settings.guidance_scale is not None:
        config = dataclasses.replace(config, guidance_scale=float(settings.guidance_scale))
    return config


def variant_vsd(variant: Variant, settings: FastSettings) -> Optional[VSDSettings]:
    """A VSD variant's own training terms (prolificdreamer-system's lambda_vsd / lambda_lora and
    its guidance learning rate and optimiser, from the variant's config); None for the others.
    The regularisers, the volume's optimiser and the cameras stay the Representation's."""
    cfg = load_config(variant.config, variant.overrides, settings.steps)
    if cfg.system.guidance_type != "perp-neg-vsd-guidance":
        return None
    return VSDSettings.from_blocks(block(cfg, "system.loss"), block(cfg, "system.optimizer"))


def prior_framed(cameras: CameraSettings) -> CameraSettings:
    """The cameras framed as the prior's world photographs its creatures (``WorldBias``' distance
    and fovy ranges, looking at the centre: no camera, centre or up perturbation), the test orbit
    at the middle of those ranges; elevation, azimuth, light and size kept. threestudio's configs
    do the same for their priors (zero123.yaml: its distance and fovy; gradio/sjc.yaml,
    prolificdreamer-*.yaml: perturbations off)."""
    bias = WorldBias()
    return dataclasses.replace(
        cameras, camera_distance_range=tuple(bias.distance_range), fovy_range=tuple(bias.fovy_range),
        camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0,
        eval_camera_distance=round(sum(bias.distance_range) / 2.0, 6),
        eval_fovy_deg=round(sum(bias.fovy_range) / 2.0, 6))


def prior_camera_overrides() -> List[str]:
    """``prior_framed`` as threestudio ``data`` overrides (the launcher path's ``--cameras prior``)."""
    framed = prior_framed(CameraSettings())
    return [f"data.camera_distance_range=[{framed.camera_distance_range[0]:g},{framed.camera_distance_range[1]:g}]",
            f"data.fovy_range=[{framed.fovy_range[0]:g},{framed.fovy_range[1]:g}]",
            "data.camera_perturb=0.0", "data.center_perturb=0.0", "data.up_perturb=0.0",
            f"data.eval_camera_distance={framed.eval_camera_distance:g}",
            f"data.eval_fovy_deg={framed.eval_fovy_deg:g}"]


@dataclass
class Representation:
    """What every variant shares, from REPRESENTATION_CONFIG."""

    cameras: CameraSettings
    system: SystemSettings
    material: Material
    volume: VolumeSettings
    orbit_distance: float
    orbit_fovy: float

    @classmethod
    def from_config(cls, volume: VolumeSettings, max_steps: int, config: str = REPRESENTATION_CONFIG,
                    preset: str = "configs") -> "Representation":
        if preset not in CAMERA_PRESETS:
            raise ConfigError("cameras", preset, "the 3D runs' cameras", list(CAMERA_PRESETS))
        cfg = load_config(config, max_steps=max_steps)
        geometry = block(cfg, "system.geometry")
        if geometry.get("density_bias") != "blob_magic3d":
            raise ConfigError("system.geometry.density_bias", geometry.get("density_bias"),
                              "the fast path's volume has threestudio's blob_magic3d bias", ["blob_magic3d"])
        volume = dataclasses.replace(volume, density_blob_scale=float(geometry.get("density_blob_scale", 10.0)),
                                     density_blob_std=float(geometry.get("density_blob_std", 0.5)))
        # a latent volume renders at the prior's latent size (threestudio's Latent-NeRF renders 64x64 for SD)
        cameras = CameraSettings.from_data_block(
            block(cfg, "data"), LAB_LATENT_RESOLUTION if volume.features == "latent" else LAB_RESOLUTION)
        if preset == "prior":
            cameras = prior_framed(cameras)
        return cls(cameras=cameras, system=SystemSettings.from_blocks(block(cfg, "system.loss"),
                                                                      block(cfg, "system.optimizer")),
                   material=Material.from_block(block(cfg, "system.material")), volume=volume,
                   orbit_distance=cameras.eval_camera_distance, orbit_fovy=cameras.eval_fovy_deg)
