"""2D score distillation on the lab prior: one image optimised with the guidance from one camera.

It separates score distillation itself from the 3D representation. The fast path's baseline never
drew the face where it belongs (README, the 3D calibration); here the same guidance (the baseline
variant's config, ``ScoreDistillationGuidance`` called as a system calls it) optimises a single
image seen from the front, either

* ``pixels``: sigmoid(logits) at ``resolution`` (what a render is; the backbone resizes it to its
  own 32x32 bilinearly and encodes it with the VAE, as threestudio's guidance does with 64x64
  renders for Stable Diffusion's 512x512), or
* ``latents``: the latent itself (threestudio's ``rgb_as_latents=True``; the VAE encoder is not on
  the gradient path), decoded for the judge.

The judge then says what the image shows (view, kind, face).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from antijanus.utils.errors import ConfigError

PARAMETERISATIONS = ("pixels", "latents")


@dataclass(frozen=True)
class SDS2DSettings:
    parameterisation: str = "pixels"
    resolution: int = 32  # pixels per side (``pixels`` only)
    steps: int = 600
    lr: float = 0.1  # Adam, as the fast path's voxel grid
    elevation: float = 15.0  # the camera passed to the guidance (view-dependent prompt: front)
    azimuth: float = 0.0
    distance: float = 1.5

    def __post_init__(self) -> None:
        if self.parameterisation not in PARAMETERISATIONS:
            raise ConfigError("parameterisation", self.parameterisation, "how the image is optimised",
                              list(PARAMETERISATIONS))
        if not isinstance(self.resolution, int) or self.resolution < 2:
            raise ConfigError("resolution", self.resolution, "pixels per side, an integer >= 2")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError("steps", self.steps, "an integer >= 1")
        if not self.lr > 0:
            raise ConfigError("lr", self.lr, "a learning rate > 0")


def optimise_image(guidance, prompt_utils, settings: SDS2DSettings, seed: int = 0,
                   judge_size: int = 32) -> Dict[str, Tensor]:
    """``settings.steps`` Adam steps of one image on the guidance's ``loss_sds`` (t and noise drawn
    by torch's global generator, seeded). Returns ``image`` [3, judge_size, judge_size] in [0, 1]
    and the per-step ``loss_sds``."""
    torch.manual_seed(seed)
    backbone = guidance.backbone
    if settings.parameterisation == "pixels":
        r = settings.resolution
        variable = torch.zeros(1, r, r, 3, requires_grad=True)  # logits: mid-grey start
    else:
        with torch.no_grad():
            grey = torch.full((1, 3, judge_size, judge_size), 0.5)
            start = backbone.encode_images(grey)  # the latent of a grey image, [1, 4, h, w]
        variable = start.permute(0, 2, 3, 1).clone().requires_grad_(True)  # guidance layout [B, H, W, C]
    optimizer = torch.optim.Adam([variable], lr=settings.lr)
    guidance.set_run_max_steps(settings.steps)
    camera = [torch.tensor([float(v)]) for v in (settings.elevation, settings.azimuth, settings.distance)]
    losses = []
    for step in range(settings.steps):
        guidance.update_step(0, step)
        latents = settings.parameterisation == "latents"
        rgb = variable if latents else torch.sigmoid(variable)
        out = guidance(rgb, prompt_utils, *camera, rgb_as_latents=latents)
        optimizer.zero_grad(set_to_none=True)
        out["loss_sds"].backward()
        optimizer.step()
        losses.append(float(out["loss_sds"].detach()))
    with torch.no_grad():
        if settings.parameterisation == "latents":
            image = backbone.decode_latents(variable.permute(0, 3, 1, 2))
        else:
            image = torch.sigmoid(variable).permute(0, 3, 1, 2)
        image = F.interpolate(image.float(), (judge_size, judge_size), mode="bilinear", align_corners=False)
    return {"image": image[0].clamp(0, 1), "loss_sds": torch.tensor(losses)}
