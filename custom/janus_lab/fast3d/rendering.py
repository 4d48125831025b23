"""Volume rendering of the fast path's scene, shaded by threestudio's
``diffuse-with-point-light-material``: ``samples`` stratified points per ray inside the ball,
alpha compositing, the background behind; albedo only before ``ambient_only_steps``, afterwards
albedo / textureless / diffuse with its probabilities; diffuse at test time with the light at the
camera. ``render_orbit``: the test orbit's frames (a latent volume's decoded by the prior)."""

from __future__ import annotations

import random as _random
from dataclasses import dataclass, fields
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from antijanus.utils.errors import ConfigError

from .cameras import LAB_RESOLUTION, Cameras, orbit_cameras
from .volume import EnvironmentBackground, Scene, VoxelVolume


def ball_interval(rays_o: Tensor, rays_d: Tensor, radius: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances of unit rays through the ball, and whether they hit it."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp_min(0).sqrt()
    near = (-b - root).clamp_min(0.0)
    far = (-b + root).clamp_min(0.0)
    return near, torch.where(hit, far, near), hit


@dataclass
class Material:
    """threestudio's diffuse-with-point-light-material (its defaults)."""

    ambient_only_steps: int = 1000
    diffuse_prob: float = 0.75
    textureless_prob: float = 0.5
    ambient: float = 0.1
    diffuse: float = 0.9

    @classmethod
    def from_block(cls, block: Optional[Mapping]) -> "Material":
        block = dict(block or {})
        for key in ("soft_shading", "ambient_only_on_test"):
            if block.get(key):
                raise ConfigError(f"system.material.{key}", block[key], "is not in the fast path")
        return cls(ambient_only_steps=int(block.get("ambient_only_steps", 1000)),
                   diffuse_prob=float(block.get("diffuse_prob", 0.75)),
                   textureless_prob=float(block.get("textureless_prob", 0.5)),
                   ambient=float(tuple(block.get("ambient_light_color", (0.1,)))[0]),
                   diffuse=float(tuple(block.get("diffuse_light_color", (0.9,)))[0]))

    def training_shading(self, global_step: int, rng: _random.Random) -> str:
        if global_step < self.ambient_only_steps or rng.random() > self.diffuse_prob:
            return "albedo"
        return "textureless" if rng.random() < self.textureless_prob else "diffuse"

    def test_shading(self, global_step: int) -> str:
        return "albedo" if global_step < self.ambient_only_steps else "diffuse"

    def shade(self, shading: str, albedo: Tensor, normal: Optional[Tensor], points: Tensor,
              light_positions: Tensor) -> Tensor:
        if shading == "albedo":
            return albedo
        light = F.normalize(light_positions - points, dim=-1)
        textureless = (normal * light).sum(-1, keepdim=True).clamp_min(0.0) * self.diffuse + self.ambient
        return textureless.expand_as(albedo) if shading == "textureless" else albedo.clamp(0, 1) * textureless


def render(volume: VoxelVolume, background: EnvironmentBackground, cameras: Cameras, material: Material,
           shading: str, generator: Optional[torch.Generator] = None, with_normal: bool = True) -> Dict[str, Tensor]:
    """Volume rendering of every camera's rays: ``comp_rgb`` [B, H, W, 3], ``opacity`` [B, H, W, 1]
    and, per sample, ``weights``, ``normal`` and ``t_dirs`` (threestudio's names). Stratified
    sample positions when a generator is given (training), midpoints otherwise."""
    s = volume.settings
    rays_o, rays_d = cameras.rays_o.reshape(-1, 3), cameras.rays_d.reshape(-1, 3)
    R, N = rays_o.shape[0], s.samples
    near, far, hit = ball_interval(rays_o, rays_d, s.radius)
    jitter = torch.rand(R, N, generator=generator) if generator is not None else torch.full((R, N), 0.5)
    step = (far - near) / N
    t = near[:, None] + (torch.arange(N, dtype=torch.float32)[None] + jitter) * step[:, None]  # [R, N]
    points = rays_o[:, None] + t[..., None] * rays_d[:, None]
    light = cameras.light_positions.repeat_interleave(R // cameras.light_positions.shape[0], 0)
    need_normal = with_normal or shading != "albedo"
    field_out = volume(points.reshape(-1, 3), with_normal=need_normal)
    density = field_out["density"].reshape(R, N) * hit[:, None]
    alpha = 1.0 - torch.exp(-density * step[:, None])
    transmittance = torch.cumprod(torch.cat([torch.ones(R, 1), 1.0 - alpha + 1e-10], 1), 1)[:, :-1]
    weights = alpha * transmittance  # [R, N]
    normal = field_out["normal"].reshape(R, N, 3) if need_normal else None
    C = field_out["albedo"].shape[-1]
    colour = material.shade(shading, field_out["albedo"].reshape(R, N, C), normal, points,
                            light[:, None].expand(R, N, 3)).reshape(R, N, C)
    opacity = weights.sum(-1, keepdim=True)
    rgb = (weights[..., None] * colour).sum(1) + (1.0 - opacity) * background(rays_d)
    B, H, W = cameras.rays_d.shape[:3]
    return {"comp_rgb": rgb.reshape(B, H, W, C), "opacity": opacity.reshape(B, H, W, 1), "weights": weights,
            "normal": normal, "t_dirs": rays_d[:, None].expand(R, N, 3)}


@torch.no_grad()
def render_orbit(scene: Scene, azimuths_deg: Tensor, elevation_deg: float, distance: float, fovy_deg: float,
                 material: Material, global_step: int, resolution: int = LAB_RESOLUTION, chunk: int = 12,
                 decode: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """The test orbit (threestudio's test shading and cameras): frames [N, 3, H, W] in [0, 1]
    and opacity [N, 1, H, W]. A latent volume renders latents, which ``decode`` (the prior's
    ``decode_latents``, [N, C, h, w] -> images) turns into frames, as threestudio's Latent-NeRF
    system decodes its renders."""
    latent = scene.volume.settings.features == "latent"
    if latent and decode is None:
        raise ValueError("a latent volume's orbit needs decode (the prior's decode_latents)")
    cameras = orbit_cameras(azimuths_deg, elevation_deg, distance, fovy_deg, resolution)
    shading = "albedo" if latent else material.test_shading(global_step)
    frames, opacity = [], []
    for i in range(0, azimuths_deg.shape[0], chunk):
        part = Cameras(*(getattr(cameras, f.name)[i:i + chunk] for f in fields(Cameras)))
        out = render(scene.volume, scene.background, part, material, shading, None, with_normal=shading != "albedo")
        rendered = out["comp_rgb"].permute(0, 3, 1, 2)
        frames.append((decode(rendered) if latent else rendered).float().clamp(0, 1))
        opacity.append(out["opacity"].permute(0, 3, 1, 2))
    return torch.cat(frames), torch.cat(opacity)
