"""Training the lab judge (``train_judge``): rendered ground truth with augmentations and
scrambled negatives, a cosine learning-rate schedule, then the held-out figures and the folder
(``judge.save_judge``). Deterministic for a fixed ``JudgeSettings`` (thread count included)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .judge import JudgeNet, save_judge
from .judge_data import augment, colour_drift, render_labelled, scrambled_negatives
from .judge_evaluation import held_out_figures
from .judge_sds_data import sds_like
from .judge_settings import JudgeSettings
from .training import log_every
from .world import ATTRIBUTES, KINDS, VIEWS


def judge_loss(out: Dict[str, Tensor], batch: Dict[str, Tensor], real: Optional[Tensor] = None) -> Tensor:
    """Cross-entropy of view and kind, the attributes' binary cross-entropy and the camera
    regression; ``real`` [B] bool: the images with a view and a kind (scrambled negatives only
    train the attributes, all absent)."""
    azimuth = torch.deg2rad(batch["azimuth"])
    camera = torch.stack([torch.cos(azimuth), torch.sin(azimuth), batch["elevation"] / 90.0], -1)
    real = torch.ones_like(batch["kind"], dtype=torch.bool) if real is None else real
    weight = real.float() / real.float().sum().clamp_min(1.0)
    view = (F.cross_entropy(out["view"], batch["view"], reduction="none") * weight).sum()
    kind = (F.cross_entropy(out["kind"], batch["kind"], reduction="none") * weight).sum()
    camera_loss = (((out["camera"] - camera) ** 2).mean(-1) * weight).sum()
    return view + kind + F.binary_cross_entropy_with_logits(out["attributes"], batch["attributes"]) + camera_loss


def judge_data_sets(settings: JudgeSettings) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], Dict[str, Tensor]]:
    """The training renders (seed ``seed``, with the training set's extra creatures; a share
    through the prior's VAE, ``sds_like`` with seed + 4) and the held-out ones, clean renders of
    the world's creatures as for every judge: the world's own creatures, face
    and tail (seed + 1), and creatures without their face (seed + 3)."""
    train = sds_like(render_labelled(settings, settings.n_train, settings.seed, training=True), settings,
                     settings.seed + 4)
    test = render_labelled(dataclasses.replace(settings, p_faceless=0.0, p_tailless=0.0), settings.n_test,
                           settings.seed + 1)
    faceless = render_labelled(dataclasses.replace(settings, p_faceless=1.0, p_tailless=0.0),
                               settings.n_test // 4, settings.seed + 3)
    return train, test, faceless


def fit_judge(net: JudgeNet, train: Dict[str, Tensor], settings: JudgeSettings, g: torch.Generator,
              log=print) -> None:
    """``settings.steps`` AdamW steps on random batches of ``train`` (cosine learning rate), a
    share ``p_scrambled`` of each batch replaced by scrambled negatives, every image augmented
    (colour drift on the object first, ``colour_drift``; no draw at 0)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    tick = log_every(30.0, log)
    for step in range(settings.steps):
        lr = settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / settings.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, settings.n_train, (settings.batch,), generator=g)
        batch = {k: v[index] for k, v in train.items()}
        images = batch["image"].float() / 255.0
        if settings.colour_drift > 0:
            images = colour_drift(images, batch["silhouette"], settings, g)
        scrambled = torch.rand(settings.batch, generator=g) < settings.p_scrambled
        if scrambled.any():
            images[scrambled] = scrambled_negatives(images[scrambled], settings, g, mask=batch["silhouette"][scrambled])
            batch["attributes"] = batch["attributes"] * (~scrambled).float()[:, None]
        net.train()
        out = net(augment(images, settings, g))
        loss = judge_loss(out, batch, real=~scrambled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tick(f"judge step {step}/{settings.steps} loss {loss.item():.4f}")
    net.eval()


def train_judge(out_dir: str, settings: JudgeSettings = JudgeSettings(), log=print) -> Dict[str, object]:
    """Train a judge from scratch, measure it on held-out renders and write its folder to
    ``out_dir``; returns the record saved as judge.json."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    start = time.time()
    train, test, faceless = judge_data_sets(settings)
    log(f"judge data: {settings.n_train} + {settings.n_test} + {settings.n_test // 4} (faceless) images in "
        f"{time.time() - start:.0f} s")
    g = torch.Generator().manual_seed(settings.seed)
    net = JudgeNet(settings.width)
    t0 = time.time()
    fit_judge(net, train, settings, g, log)
    train_s = time.time() - t0
    record = {"settings": settings.to_dict(), "views": list(VIEWS), "kinds": list(KINDS),
              "attributes": list(ATTRIBUTES), **held_out_figures(net, test, faceless, settings),
              "parameters": sum(p.numel() for p in net.parameters())}
    record["timings"] = {"train_s": train_s, "total_s": time.time() - start}
    record["torch"] = torch.__version__
    save_judge(net, record, out_dir)
    return record
