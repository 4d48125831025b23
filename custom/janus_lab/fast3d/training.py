"""The fast path's training loop: threestudio's ``dreamfusion-system`` in plain PyTorch. The
guidance's ``loss_sds`` (times ``lambda_sds``), the orientation, sparsity and opacity losses with
the config's lambdas (schedules as threestudio's ``C``); Adam with the config's per-module
learning rates. The guidance is ``antijanus.core.guidance.ScoreDistillationGuidance`` itself,
called as a threestudio system calls it (``update_step`` each step, renders [B, H, W, 3], the
cameras' elevation / azimuth / distance). With ``VSDSettings`` it is threestudio's
``prolificdreamer-system`` instead: the guidance (``VSDGuidance``) also gets the batch's ``c2w`` /
``mvp_mtx``, the loss is lambda_vsd loss_vsd + lambda_lora loss_lora (plus the same regularisers),
and the guidance's LoRA and camera embedding train with the config's optimiser at its ``guidance``
learning rate."""

from __future__ import annotations

import math
import random as _random
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from antijanus.core.sds import scalar_schedule
from antijanus.utils.errors import ConfigError

from .cameras import CameraSampler, CameraSettings, SampledCameras
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


@dataclass(frozen=True)
class VSDSettings:
    """threestudio's prolificdreamer-system's VSD terms, from a VSD config's ``system.loss`` /
    ``system.optimizer`` blocks: the loss lambda_vsd loss_vsd + lambda_lora loss_lora (threestudio
    needs both keys; schedules as its ``C``), and the guidance's trainable parameters (the LoRA and
    the camera embedding) under the config's optimiser (``name``, ``args``) at
    ``params.guidance.lr``."""

    lambda_vsd: Any = 1.0
    lambda_lora: Any = 1.0
    lr: float = 1e-4  # optimizer.params.guidance.lr (prolificdreamer.yaml's)
    optimizer: str = "AdamW"  # prolificdreamer.yaml's optimizer.name
    betas: Tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    weight_decay: Optional[float] = None  # optimizer.args.weight_decay (None: torch's default, AdamW 0.01)

    @classmethod
    def from_blocks(cls, loss: Optional[Mapping], optimizer: Optional[Mapping]) -> "VSDSettings":
        loss, optimizer = dict(loss or {}), dict(optimizer or {})
        for key in ("lambda_vsd", "lambda_lora"):
            if key not in loss:
                raise ConfigError(f"system.loss.{key}", None, "VSD's loss needs it (threestudio's "
                                  "prolificdreamer-system weights each guidance loss by its lambda)")
        name = optimizer.get("name", "Adam")
        if name not in ("Adam", "AdamW"):
            raise ConfigError("system.optimizer.name", name, "the fast path trains with Adam or AdamW",
                              ["Adam", "AdamW"])
        args = dict(optimizer.get("args") or {})
        guidance = dict((optimizer.get("params") or {}).get("guidance") or {})
        lr = guidance.get("lr", args.get("lr"))
        if lr is None:
            raise ConfigError("system.optimizer.params.guidance.lr", None, "VSD trains the guidance's LoRA "
                              "(threestudio's optimizer group 'guidance')")
        decay = args.get("weight_decay")
        return cls(lambda_vsd=loss["lambda_vsd"], lambda_lora=loss["lambda_lora"], lr=float(lr), optimizer=name,
                   betas=tuple(args.get("betas", (0.9, 0.99))), eps=float(args.get("eps", 1e-15)),
                   weight_decay=None if decay is None else float(decay))

    def make_optimizer(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The guidance group's optimiser (Adam's state is per parameter: one optimiser of its own
        is the same as a group of the system's)."""
        extra = {} if self.weight_decay is None else {"weight_decay": self.weight_decay}
        return getattr(torch.optim, self.optimizer)(list(parameters), lr=self.lr, betas=self.betas, eps=self.eps,
                                                    **extra)


class GuidanceTraining:
    """VSD's LoRA and camera embedding (``guidance.lora.parameters()``), their optimiser, and how
    far they moved from their initial weights (``change``: the L2 norm of the difference)."""

    def __init__(self, guidance, settings: VSDSettings) -> None:
        self.parameters: List[torch.nn.Parameter] = list(guidance.lora.parameters())
        self.initial = [p.detach().clone() for p in self.parameters]
        self.optimizer = settings.make_optimizer(self.parameters)

    def change(self) -> float:
        return math.sqrt(sum(float((p.detach() - p0).square().sum()) for p, p0 in zip(self.parameters, self.initial)))


def guidance_inputs(batch: SampledCameras, latent: bool, vsd: Optional[VSDSettings]) -> Dict[str, Any]:
    """The guidance's keyword arguments besides the renders and the angles: ``rgb_as_latents`` for a
    latent volume; the batch's matrices for VSD (its LoRA's camera condition)."""
    inputs: Dict[str, Any] = {"rgb_as_latents": True} if latent else {}
    if vsd is not None:
        inputs.update(c2w=batch.c2w, mvp_mtx=batch.mvp_mtx)
    return inputs


def guidance_terms(guided: Mapping[str, Any], system: SystemSettings, vsd: Optional[VSDSettings],
                   step: int) -> Dict[str, Tensor]:
    """The guidance's weighted losses: lambda_sds loss_sds, or VSD's two."""
    if vsd is None:
        return {"loss_sds": guided["loss_sds"] * scalar_schedule(system.lambda_sds, 0, step)}
    return {"loss_vsd": guided["loss_vsd"] * scalar_schedule(vsd.lambda_vsd, 0, step),
            "loss_lora": guided["loss_lora"] * scalar_schedule(vsd.lambda_lora, 0, step)}


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


LOGGED_DIAGNOSTICS = ("grad_norm", "dsds/clipped_fraction", "dsds/clip_threshold", "perp_neg/mean_abs_proj",
                     "unet_rows")


def log_step(history: Dict[str, list], step: int, loss: Tensor, terms: Mapping[str, Tensor],
             guided: Mapping[str, Any], lora: Optional[GuidanceTraining]) -> None:
    """One logged step: the loss, each term, the guidance's diagnostics and, for VSD, how far the
    LoRA moved (``lora/change``); a non-finite loss stops the run."""
    record = {"step": step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
    for key in LOGGED_DIAGNOSTICS:
        if key in guided:
            record[key] = float(guided[key])
    if lora is not None:
        record["lora/change"] = lora.change()
    for key, value in record.items():
        history.setdefault(key, []).append(value)
    if not math.isfinite(record["loss"]):
        raise FloatingPointError(f"the loss is {record['loss']} at step {step}")


def train(guidance, prompt_utils, scene: Scene, cameras: CameraSettings, system: SystemSettings,
          material: Material, steps: int, seed: int, log_every: int = 10,
          vsd: Optional[VSDSettings] = None) -> TrainResult:
    """``steps`` optimisation steps of the scene with the guidance, as threestudio's
    dreamfusion-system does them (guidance.update_step, render, guidance(...), losses, Adam), or
    its prolificdreamer-system with ``vsd`` (the guidance's LoRA trained alongside).
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
    lora = GuidanceTraining(guidance, vsd) if vsd is not None else None
    optimizers = [optimizer] + ([lora.optimizer] if lora is not None else [])
    history: Dict[str, list] = {}
    latent = scene.volume.settings.features == "latent"  # Latent-NeRF: no material, latents to the guidance
    for step in range(steps):
        guidance.update_step(0, step)
        batch = sampler.sample(step)
        shading = "albedo" if latent else material.training_shading(step, shading_rng)
        out = render(scene.volume, scene.background, batch, material, shading, stratify)
        guided = guidance(out["comp_rgb"], prompt_utils, batch.elevation, batch.azimuth, batch.camera_distances,
                          **guidance_inputs(batch, latent, vsd))
        terms = guidance_terms(guided, system, vsd, step)
        for name, fn, weight in (("loss_orient", orientation_loss, system.lambda_orient),
                                 ("loss_sparsity", sparsity_loss, system.lambda_sparsity),
                                 ("loss_opaque", opaque_loss, system.lambda_opaque)):
            value = scalar_schedule(weight, 0, step)
            if value > 0:
                terms[name] = fn(out) * value
        loss = sum(terms.values())
        for each in optimizers:
            each.zero_grad(set_to_none=True)
        loss.backward()
        for each in optimizers:
            each.step()
        if step % log_every == 0 or step == steps - 1:
            log_step(history, step, loss, terms, guided, lora)
    return TrainResult(scene, history)
