"""The fast path's cameras, as threestudio's ``random-camera-datamodule`` samples them
(``data/uncond.py``) with the data block of a shipped NeRF config: elevation uniform in degrees or
uniform on the sphere (probability 1/2 each), azimuth stratified over the batch, distance and
fovy uniform, camera / centre / up perturbations, the "dreamfusion" light near the camera; the
first step looks from the front at the evaluation elevation (its ``progressive_view`` with
``progressive_until: 0``). Pinhole rays in its convention (``lab.world`` uses the same), and the
batch's ``c2w`` / ``mvp_mtx`` as it gives them; the test orbit's cameras unperturbed, the light at
the camera."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from antijanus.utils.errors import ConfigError

LAB_RESOLUTION = 32
LAB_LATENT_RESOLUTION = 16  # the lab prior's latent size (its VAE halves 32x32): a latent volume renders at it


@dataclass(frozen=True)
class CameraSettings:
    """threestudio's ``RandomCameraDataModuleConfig`` keys (its defaults), at the lab's resolution."""

    height: int = LAB_RESOLUTION
    width: int = LAB_RESOLUTION
    batch_size: int = 1
    elevation_range: Tuple[float, float] = (-10.0, 90.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: Tuple[float, float] = (1.0, 1.5)
    fovy_range: Tuple[float, float] = (40.0, 70.0)
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: str = "dreamfusion"
    batch_uniform_azimuth: bool = True
    progressive_until: int = 0

    @classmethod
    def from_data_block(cls, data: Optional[Mapping], resolution: int = LAB_RESOLUTION) -> "CameraSettings":
        """A config's ``data`` block; its render size is replaced by the lab's resolution."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"height", "width"}
        values = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in data.items() if k in known}
        settings = cls(height=resolution, width=resolution, **values)
        if settings.light_sample_strategy != "dreamfusion":
            raise ConfigError("data.light_sample_strategy", settings.light_sample_strategy,
                              "the fast path samples threestudio's dreamfusion light only", ["dreamfusion"])
        if not isinstance(settings.batch_size, int) or settings.batch_size < 1:
            raise ConfigError("data.batch_size", settings.batch_size, "must be one integer >= 1")
        return settings


@dataclass
class Cameras:
    rays_o: Tensor  # [B, H, W, 3]
    rays_d: Tensor  # [B, H, W, 3], unit
    positions: Tensor  # [B, 3]
    light_positions: Tensor  # [B, 3]
    elevation: Tensor  # [B] degrees (before perturbation, as threestudio passes them)
    azimuth: Tensor  # [B]
    camera_distances: Tensor  # [B]


def spherical(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([distance * torch.cos(e) * torch.cos(a), distance * torch.cos(e) * torch.sin(a),
                        distance * torch.sin(e)], -1)


def look_at_frame(position: Tensor, center: Tensor, up: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """threestudio's look-at frame: (right, up, lookat), each [B, 3], unit."""
    lookat = F.normalize(center - position, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    return right, up, lookat


def look_at_rays(position: Tensor, center: Tensor, up: Tensor, fovy_deg: Tensor, height: int,
                 width: int) -> Tuple[Tensor, Tensor]:
    """threestudio's look-at frame (right, up, -lookat) and pinhole rays through pixel centres,
    focal 0.5 H / tan(fovy / 2); rays [B, H, W, 3], normalised."""
    right, up, lookat = look_at_frame(position, center, up)
    focal = 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy_deg))
    u = torch.arange(width, dtype=torch.float32) + 0.5 - width / 2
    v = torch.arange(height, dtype=torch.float32) + 0.5 - height / 2
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    x = uu[None] / focal[:, None, None]
    y = -vv[None] / focal[:, None, None]
    directions = x[..., None] * right[:, None, None] + y[..., None] * up[:, None, None] + lookat[:, None, None]
    rays_d = F.normalize(directions, dim=-1)
    return position[:, None, None].expand_as(rays_d), rays_d


def camera_matrices(position: Tensor, center: Tensor, up: Tensor, fovy_deg: Tensor,
                    aspect_wh: float) -> Tuple[Tensor, Tensor]:
    """threestudio's ``c2w`` [B, 4, 4] (columns right, up, -lookat, the position) and ``mvp_mtx``
    (its ``get_projection_matrix``, near 0.01 / far 100, times the inverse of c2w), as its
    random-camera data module gives them (``data/uncond.py``, ``utils/ops.py``)."""
    right, up, lookat = look_at_frame(position, center, up)
    batch = position.shape[0]
    c2w = torch.zeros(batch, 4, 4)
    c2w[:, :3, :3] = torch.stack([right, up, -lookat], -1)
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    near, far = 0.01, 100.0
    tan_half = torch.tan(torch.deg2rad(fovy_deg) / 2.0)
    projection = torch.zeros(batch, 4, 4)
    projection[:, 0, 0] = 1.0 / (tan_half * aspect_wh)
    projection[:, 1, 1] = -1.0 / tan_half
    projection[:, 2, 2] = -(far + near) / (far - near)
    projection[:, 2, 3] = -2.0 * far * near / (far - near)
    projection[:, 3, 2] = -1.0
    w2c = torch.zeros(batch, 4, 4)
    w2c[:, :3, :3] = c2w[:, :3, :3].transpose(1, 2)
    w2c[:, :3, 3:] = -c2w[:, :3, :3].transpose(1, 2) @ c2w[:, :3, 3:]
    w2c[:, 3, 3] = 1.0
    return c2w, projection @ w2c


@dataclass
class SampledCameras(Cameras):
    """A training batch: the cameras and their matrices (VSD's LoRA is conditioned on one)."""

    c2w: Tensor  # [B, 4, 4]
    mvp_mtx: Tensor  # [B, 4, 4]


class CameraSampler:
    """Random training cameras of threestudio's random-camera-datamodule, from one generator."""

    def __init__(self, settings: CameraSettings, generator: torch.Generator) -> None:
        self.s = settings
        self.g = generator

    def _uniform(self, low: float, high: float, *shape: int) -> Tensor:
        return torch.rand(*(shape or (self.s.batch_size,)), generator=self.g) * (high - low) + low

    def ranges(self, global_step: int) -> Tuple[Tuple[float, float], Tuple[float, float]]:
        """threestudio's progressive_view: the ranges grow from the evaluation view to the full
        ones over ``progressive_until`` steps (0: full from step 1, front view at step 0)."""
        s = self.s
        r = min(1.0, global_step / (s.progressive_until + 1))
        elevation = ((1 - r) * s.eval_elevation_deg + r * s.elevation_range[0],
                     (1 - r) * s.eval_elevation_deg + r * s.elevation_range[1])
        azimuth = (r * s.azimuth_range[0], r * s.azimuth_range[1])
        return elevation, azimuth

    def sample(self, global_step: int) -> Cameras:
        s, B = self.s, self.s.batch_size
        (e0, e1), (a0, a1) = self.ranges(global_step)
        if torch.rand((), generator=self.g) < 0.5:  # uniform in degrees (biased towards the poles)
            elevation = self._uniform(e0, e1)
        else:  # uniform on the sphere
            lo, hi = math.sin(math.radians(e0)), math.sin(math.radians(e1))
            elevation = torch.rad2deg(torch.asin(self._uniform(lo, hi)))
        if s.batch_uniform_azimuth:
            azimuth = (torch.rand(B, generator=self.g) + torch.arange(B)) / B * (a1 - a0) + a0
        else:
            azimuth = self._uniform(a0, a1)
        distance = self._uniform(*s.camera_distance_range)
        position = spherical(elevation, azimuth, distance)
        position = position + self._uniform(-s.camera_perturb, s.camera_perturb, B, 3)
        center = torch.randn(B, 3, generator=self.g) * s.center_perturb
        up = torch.tensor([0.0, 0.0, 1.0]).expand(B, 3) + torch.randn(B, 3, generator=self.g) * s.up_perturb
        fovy = self._uniform(*s.fovy_range)
        light_distance = self._uniform(*s.light_distance_range)
        light_direction = F.normalize(position + torch.randn(B, 3, generator=self.g) * s.light_position_perturb, dim=-1)
        rays_o, rays_d = look_at_rays(position, center, up, fovy, s.height, s.width)
        c2w, mvp_mtx = camera_matrices(position, center, up, fovy, s.width / s.height)
        return SampledCameras(rays_o, rays_d, position, light_direction * light_distance[:, None], elevation,
                              azimuth, distance, c2w, mvp_mtx)


def orbit_cameras(azimuths_deg: Tensor, elevation_deg: float, distance: float, fovy_deg: float,
                  resolution: int = LAB_RESOLUTION) -> Cameras:
    """threestudio's test cameras: fixed elevation / distance / fovy, no perturbation, the light
    at the camera."""
    n = azimuths_deg.shape[0]
    elevation = torch.full((n,), float(elevation_deg))
    distance_t = torch.full((n,), float(distance))
    position = spherical(elevation, azimuths_deg.float(), distance_t)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    rays_o, rays_d = look_at_rays(position, torch.zeros(n, 3), up, torch.full((n,), float(fovy_deg)),
                                  resolution, resolution)
    return Cameras(rays_o, rays_d, position, position.clone(), elevation, azimuths_deg.float(), distance_t)
