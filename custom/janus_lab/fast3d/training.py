"""The fast path's training loop: threestudio's ``dreamfusion-system`` in plain PyTorch. The
guidance's ``loss_sds`` (times ``lambda_sds``), the orientation, sparsity and opacity losses with
the config's lambdas (schedules as threestudio's ``C``); Adam with the config's per-module
learning rates. The guidance is ``antijanus.core.guidance.ScoreDistillationGuidance`` itself,
called as a threestudio system calls it (``update_step`` each step, renders [B, H, W, 3], the
cameras' elevation / azimuth / distance)."""

from __future__ import annotations

import math
import random as _random
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from antijanus.core.sds import scalar_schedule
from antijanus.utils.errors import ConfigError

from .cameras import CameraSampler, CameraSettings
from .rendering import Material, render
from .volume import Scene


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
class TrainResult:
    scene: Scene
    history: Dict[str, list] = field(default_factory=dict)  # per logged step: losses, diagnostics


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
