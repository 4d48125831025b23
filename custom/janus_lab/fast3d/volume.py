"""The fast path's scene: a voxel volume and threestudio's neural environment-map background.

* **Geometry**: a voxel grid (density and albedo logits, trilinear) over the ball of radius
  ``radius``, with threestudio's ``blob_magic3d`` density bias and softplus activation;
  "analytic" normals are minus the gradient of the density (finite differences of the grid plus
  the blob's exact gradient). Not threestudio's hash grid + MLP: a grid trains in a few hundred
  steps on a CPU. A latent volume holds the prior's latent channels (threestudio's Latent-NeRF).
* **Background**: spherical harmonics of the ray direction (bands 0-2 as tiny-cuda-nn's degree
  3), an MLP with 16 neurons x 2 hidden layers without biases, sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from antijanus.utils.errors import ConfigError


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


@dataclass
class Scene:
    volume: VoxelVolume
    background: EnvironmentBackground


def make_scene(settings: VolumeSettings, seed: int) -> Scene:
    torch.manual_seed(seed)
    if settings.features == "rgb":
        return Scene(VoxelVolume(settings), EnvironmentBackground())
    return Scene(VoxelVolume(settings), EnvironmentBackground(outputs=settings.latent_channels, activation="none"))
