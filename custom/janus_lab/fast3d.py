"""The lab's fast 3D path: a small differentiable volume, trained with the real guidance code.

What a threestudio NeRF run does, in plain PyTorch and small enough for many seeds on a CPU:

* **Cameras** as threestudio's ``random-camera-datamodule`` samples them (``data/uncond.py``),
  with the data block of a shipped NeRF config: elevation uniform in degrees or uniform on the
  sphere (probability 1/2 each), azimuth stratified over the batch, distance and fovy uniform,
  camera / centre / up perturbations, the "dreamfusion" light near the camera; the first step
  looks from the front at the evaluation elevation (its ``progressive_view`` with
  ``progressive_until: 0``). Pinhole rays in its convention (``lab.world`` uses the same).
* **Geometry**: a voxel grid (density and albedo logits, trilinear) over the ball of radius
  ``radius``, with threestudio's ``blob_magic3d`` density bias and softplus activation;
  "analytic" normals are minus the gradient of the density (finite differences of the grid plus
  the blob's exact gradient). Not threestudio's hash grid + MLP: a grid trains in a few hundred
  steps on a CPU.
* **Material**: threestudio's ``diffuse-with-point-light-material``: albedo only before
  ``ambient_only_steps``, afterwards albedo / textureless / diffuse with its probabilities;
  diffuse at test time with the light at the camera.
* **Background**: a neural environment map (spherical harmonics of the ray direction, bands
  0-2 as tiny-cuda-nn's degree 3, an MLP with 16 neurons x 2 hidden layers without biases, sigmoid).
* **Rendering**: ``samples`` stratified points per ray inside the ball, alpha compositing,
  background behind.
* **Losses**: the guidance's ``loss_sds`` (times ``lambda_sds``), the orientation loss and the
  sparsity loss of threestudio's ``dreamfusion-system`` with the config's lambdas (schedules as
  threestudio's ``C``); Adam with the config's per-module learning rates.

The guidance is ``antijanus.core.guidance.ScoreDistillationGuidance`` itself, called like a
threestudio system calls it (``update_step`` each step, renders [B, H, W, 3], the cameras'
elevation / azimuth / distance), with a prompt output from ``lab.prompt_output``.
"""

from __future__ import annotations

import math
import random as _random
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from antijanus.core.sds import scalar_schedule
from antijanus.utils.errors import ConfigError

LAB_RESOLUTION = 32
LAB_LATENT_RESOLUTION = 16  # the lab prior's latent size (its VAE halves 32x32): a latent volume renders at it


# ----------------------------------------------------------------------------- cameras


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


def look_at_rays(position: Tensor, center: Tensor, up: Tensor, fovy_deg: Tensor, height: int,
                 width: int) -> Tuple[Tensor, Tensor]:
    """threestudio's look-at frame (right, up, -lookat) and pinhole rays through pixel centres,
    focal 0.5 H / tan(fovy / 2); rays [B, H, W, 3], normalised."""
    lookat = F.normalize(center - position, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    focal = 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy_deg))
    u = torch.arange(width, dtype=torch.float32) + 0.5 - width / 2
    v = torch.arange(height, dtype=torch.float32) + 0.5 - height / 2
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    x = uu[None] / focal[:, None, None]
    y = -vv[None] / focal[:, None, None]
    directions = x[..., None] * right[:, None, None] + y[..., None] * up[:, None, None] + lookat[:, None, None]
    rays_d = F.normalize(directions, dim=-1)
    return position[:, None, None].expand_as(rays_d), rays_d


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
        return Cameras(rays_o, rays_d, position, light_direction * light_distance[:, None], elevation,
                       azimuth, distance)


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


# ----------------------------------------------------------------------------- the volume


@dataclass(frozen=True)
class VolumeSettings:
    """The fast path's representation (chosen once, for every method; see README)."""

    resolution: int = 64  # voxels per side
    # coarser grids added to it, each trilinearly upsampled (the levels of threestudio's hash-grid
    # encoding, dense at this size): low frequencies get parameters of their own, () = one grid
    coarse_levels: Tuple[int, ...] = ()
    # what the volume's colour is: "rgb" (albedo, sigmoid, threestudio's NeRF systems) or "latent"
    # (the prior's latent channels, no activation, no material: threestudio's Latent-NeRF system,
    # rendered at the latent size and given to the guidance with rgb_as_latents=True)
    features: str = "rgb"
    latent_channels: int = 4
    radius: float = 1.0  # the ball rendered (the grid spans [-radius, radius]^3)
    samples: int = 64  # points per ray
    density_blob_scale: float = 10.0  # threestudio's blob_magic3d (the NeRF configs' values)
    density_blob_std: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 2:
            raise ConfigError("volume.resolution", self.resolution, "voxels per side, an integer >= 2")
        if self.features not in ("rgb", "latent"):
            raise ConfigError("volume.features", self.features, "the volume's colour", ["rgb", "latent"])
        for level in self.coarse_levels:
            if not isinstance(level, int) or not 2 <= level < self.resolution:
                raise ConfigError("volume.coarse_levels", self.coarse_levels,
                                  f"integers >= 2 and below volume.resolution ({self.resolution})")


def colour_channels(settings: VolumeSettings) -> int:
    """3 for RGB albedo, the prior's latent channels for a latent volume."""
    return 3 if settings.features == "rgb" else settings.latent_channels


def sh_basis(directions: Tensor) -> Tensor:
    """Real spherical harmonics of bands 0-2 (tiny-cuda-nn's SphericalHarmonics, degree 3) of unit
    directions [..., 3] -> [..., 9]."""
    x, y, z = directions.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
        0.94617469575755997 * z * z - 0.31539156525252005,
        -1.0925484305920792 * x * z, 0.54627421529603959 * (x * x - y * y),
    ], -1)


class EnvironmentBackground(nn.Module):
    """threestudio's neural-environment-map-background: colour = sigmoid(MLP(SH(direction)))."""

    def __init__(self, neurons: int = 16, hidden_layers: int = 2, outputs: int = 3, activation: str = "sigmoid") -> None:
        super().__init__()
        layers = [nn.Linear(9, neurons, bias=False), nn.ReLU()]
        for _ in range(hidden_layers - 1):
            layers += [nn.Linear(neurons, neurons, bias=False), nn.ReLU()]
        layers.append(nn.Linear(neurons, outputs, bias=False))
        self.mlp = nn.Sequential(*layers)
        self.activation = activation  # "sigmoid" (RGB) or "none" (latents, threestudio's Latent-NeRF)

    def forward(self, directions: Tensor) -> Tensor:
        out = self.mlp(sh_basis(directions))
        return torch.sigmoid(out) if self.activation == "sigmoid" else out


class VoxelVolume(nn.Module):
    """Density and albedo logits on a grid, sampled trilinearly; threestudio's blob_magic3d bias
    density = softplus(raw + scale (1 - |x| / std)); albedo = sigmoid(logits). With
    ``coarse_levels`` the grid is the sum of the finest one and the coarser ones upsampled."""

    def __init__(self, settings: VolumeSettings) -> None:
        super().__init__()
        self.settings = settings
        g = settings.resolution
        c = 1 + colour_channels(settings)  # [density, r, g, b] or [density, latent...], axes z, y, x
        self.grid = nn.Parameter(torch.zeros(1, c, g, g, g))
        self.coarse = nn.ParameterList([nn.Parameter(torch.zeros(1, c, r, r, r)) for r in settings.coarse_levels])

    def composed(self) -> Tensor:
        """The finest grid plus every coarse level, trilinearly upsampled to it [1, C, g, g, g]."""
        g = self.settings.resolution
        volume = self.grid
        for level in self.coarse:
            volume = volume + F.interpolate(level, size=(g, g, g), mode="trilinear", align_corners=True)
        return volume

    def _sample(self, volume: Tensor, points: Tensor) -> Tensor:
        """volume [1, C, D, H, W], points [P, 3] (world) -> [P, C]."""
        coords = (points / self.settings.radius).reshape(1, -1, 1, 1, 3)  # grid_sample's x, y, z
        out = F.grid_sample(volume, coords, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(volume.shape[1], -1).t()

    def blob(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """The bias and its gradient."""
        s = self.settings
        norm = points.norm(dim=-1, keepdim=True)
        bias = s.density_blob_scale * (1.0 - norm / s.density_blob_std)
        gradient = -s.density_blob_scale / s.density_blob_std * points / norm.clamp_min(1e-6)
        return bias[..., 0], gradient

    def forward(self, points: Tensor, with_normal: bool = True) -> Dict[str, Tensor]:
        volume = grid = self.composed()
        if with_normal:  # the density logits' gradient (central differences), sampled with the rest
            spacing = 2.0 * self.settings.radius / (self.settings.resolution - 1)
            dz, dy, dx = torch.gradient(grid[:, :1], spacing=spacing, dim=(2, 3, 4))
            volume = torch.cat([volume, dx, dy, dz], 1)
        values = self._sample(volume, points)
        bias, bias_gradient = self.blob(points)
        c = 1 + colour_channels(self.settings)
        colour = values[:, 1:c]
        out = {"density": F.softplus(values[:, 0] + bias),
               "albedo": torch.sigmoid(colour) if self.settings.features == "rgb" else colour}
        if with_normal:
            out["normal"] = -F.normalize(values[:, c:c + 3] + bias_gradient, dim=-1)  # "analytic": -grad density
        return out


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


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class SystemSettings:
    """The losses and the optimiser of threestudio's dreamfusion-system, from a config's
    ``system.loss`` / ``system.optimizer`` blocks (threestudio's schedule lists allowed)."""

    lambda_sds: Any = 1.0
    lambda_orient: Any = 0.0
    lambda_sparsity: Any = 0.0
    lambda_opaque: Any = 0.0
    lr: float = 0.01  # optimizer.args.lr
    betas: Tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    geometry_lr: Optional[float] = None  # optimizer.params.geometry.lr (None: lr)
    background_lr: Optional[float] = None  # optimizer.params.background.lr

    @classmethod
    def from_blocks(cls, loss: Optional[Mapping], optimizer: Optional[Mapping]) -> "SystemSettings":
        loss, optimizer = dict(loss or {}), dict(optimizer or {})
        known = {"lambda_sds", "lambda_orient", "lambda_sparsity", "lambda_opaque"}
        unknown = sorted(k for k in loss if k not in known and scalar_schedule(loss[k], 0, 10 ** 6) != 0)
        if unknown:
            raise ConfigError(f"system.loss.{unknown[0]}", loss[unknown[0]], "is not in the fast path", sorted(known))
        if optimizer.get("name", "Adam") != "Adam":
            raise ConfigError("system.optimizer.name", optimizer.get("name"), "the fast path uses Adam", ["Adam"])
        args = dict(optimizer.get("args") or {})
        params = dict(optimizer.get("params") or {})
        return cls(**{k: loss[k] for k in known if k in loss}, lr=float(args.get("lr", 0.01)),
                   betas=tuple(args.get("betas", (0.9, 0.99))), eps=float(args.get("eps", 1e-15)),
                   geometry_lr=(params.get("geometry") or {}).get("lr"),
                   background_lr=(params.get("background") or {}).get("lr"))


def orientation_loss(out: Dict[str, Tensor]) -> Tensor:
    """threestudio's: weights (detached) x relu(<n, d>)^2, summed, over the pixels with opacity > 0."""
    dot = (out["normal"] * out["t_dirs"]).sum(-1).clamp_min(0.0)
    return (out["weights"].detach() * dot ** 2).sum() / (out["opacity"] > 0).sum().clamp_min(1)


def sparsity_loss(out: Dict[str, Tensor]) -> Tensor:
    return (out["opacity"] ** 2 + 0.01).sqrt().mean()


def opaque_loss(out: Dict[str, Tensor]) -> Tensor:
    o = out["opacity"].clamp(1e-3, 1 - 1e-3)
    return -(o * torch.log(o) + (1 - o) * torch.log(1 - o)).mean()


@dataclass
class Scene:
    volume: VoxelVolume
    background: EnvironmentBackground


@dataclass
class TrainResult:
    scene: Scene
    history: Dict[str, list] = field(default_factory=dict)  # per logged step: losses, diagnostics


def make_scene(settings: VolumeSettings, seed: int) -> Scene:
    torch.manual_seed(seed)
    if settings.features == "rgb":
        return Scene(VoxelVolume(settings), EnvironmentBackground())
    return Scene(VoxelVolume(settings), EnvironmentBackground(outputs=settings.latent_channels, activation="none"))


def train(guidance, prompt_utils, scene: Scene, cameras: CameraSettings, system: SystemSettings,
          material: Material, steps: int, seed: int, log_every: int = 10) -> TrainResult:
    """``steps`` optimisation steps of the scene with the guidance, as threestudio's
    dreamfusion-system does them (guidance.update_step, render, guidance(...), losses, Adam).
    The cameras and the shading choices come from their own generators seeded with ``seed``;
    the guidance draws t and its noise from torch's global generator (seeded too)."""
    torch.manual_seed(seed)
    sampler = CameraSampler(cameras, torch.Generator().manual_seed(seed))
    shading_rng = _random.Random(seed)
    stratify = torch.Generator().manual_seed(seed + 1)
    guidance.set_run_max_steps(steps)
    groups = [{"params": scene.volume.parameters(), "lr": system.geometry_lr or system.lr},
              {"params": scene.background.parameters(), "lr": system.background_lr or system.lr}]
    optimizer = torch.optim.Adam(groups, lr=system.lr, betas=system.betas, eps=system.eps)
    history: Dict[str, list] = {}
    latent = scene.volume.settings.features == "latent"  # Latent-NeRF: no material, latents to the guidance
    for step in range(steps):
        guidance.update_step(0, step)
        batch = sampler.sample(step)
        shading = "albedo" if latent else material.training_shading(step, shading_rng)
        out = render(scene.volume, scene.background, batch, material, shading, stratify)
        guided = guidance(out["comp_rgb"], prompt_utils, batch.elevation, batch.azimuth, batch.camera_distances,
                          **({"rgb_as_latents": True} if latent else {}))
        terms = {"loss_sds": guided["loss_sds"] * scalar_schedule(system.lambda_sds, 0, step)}
        for name, fn, weight in (("loss_orient", orientation_loss, system.lambda_orient),
                                 ("loss_sparsity", sparsity_loss, system.lambda_sparsity),
                                 ("loss_opaque", opaque_loss, system.lambda_opaque)):
            value = scalar_schedule(weight, 0, step)
            if value > 0:
                terms[name] = fn(out) * value
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            record = {"step": step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
            for key in ("grad_norm", "dsds/clipped_fraction", "dsds/clip_threshold", "perp_neg/mean_abs_proj",
                        "unet_rows"):
                if key in guided:
                    record[key] = float(guided[key])
            for key, value in record.items():
                history.setdefault(key, []).append(value)
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"the loss is {record['loss']} at step {step}")
    return TrainResult(scene, history)


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
