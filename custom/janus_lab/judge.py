"""The lab judge: a small CNN that tells, from a 32x32 image, the view region, the creature's kind
and which attributes are visible, so that experiments can judge generated images and 3D orbits.

Folder: ``judge.safetensors`` (fp16 weights) and ``judge.json`` (architecture, training settings,
held-out figures). This module holds the network and its folder (``Judge.load``, ``save_judge``);
``judge_settings`` the recipe, ``judge_data`` the training images, ``judge_training`` the
training loop, ``judge_evaluation`` the held-out figures.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from antijanus.utils.cache import save_safetensors
from .images import object_mask
from .model_files import sha256
from .world import ATTRIBUTES, FRONT_ONLY, IMAGE_SIZE, KINDS, VIEWS

# object_mask is re-exported: the 3D experiment's modules import it from here
__all__ = ["CONFIG", "WEIGHTS", "Judge", "JudgeNet", "PairedJudgeNet", "judge_input", "object_mask", "save_judge"]

WEIGHTS, CONFIG = "judge.safetensors", "judge.json"
ORBIT_WINDOW = "orbit_face_window_deg"  # judge.json: the face verdict on an orbit read over +- this azimuth


class JudgeNet(nn.Module):
    """Three conv stages (32 -> 16 -> 8 -> 4) and linear heads: view (4), kind (3), visible
    attributes (4, logits of independent yes/no), and an auxiliary camera regression
    (cos / sin azimuth, elevation / 90) that sharpens the view boundaries."""

    def __init__(self, width: int = 32, n_attributes: int = len(ATTRIBUTES)) -> None:
        super().__init__()
        w = width

        def stage(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(stage(3, w), stage(w, 2 * w), stage(2 * w, 4 * w))
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.ReLU())
        self.view = nn.Linear(256, len(VIEWS))
        self.kind = nn.Linear(256, len(KINDS))
        self.attributes = nn.Linear(256, n_attributes)
        self.camera = nn.Linear(256, 3)

    def embed(self, images: Tensor) -> Tensor:
        """[B, 3, 32, 32] in [0, 1] -> the hidden features [B, 256] every head reads."""
        return self.hidden(self.features(images * 2.0 - 1.0))

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        h = self.embed(images)
        return {"view": self.view(h), "kind": self.kind(h), "attributes": self.attributes(h),
                "camera": self.camera(h)}


class PairedJudgeNet(nn.Module):
    """Two JudgeNets as one judge: every output of ``base``, except the front-only attributes
    (face, smiling), which come from ``face`` (a network fine-tuned on the face alone,
    ``judge_calibration``). Its folder's judge.json says ``"architecture": "paired"``."""

    def __init__(self, width: int = 32, n_attributes: int = len(ATTRIBUTES)) -> None:
        super().__init__()
        self.base, self.face = JudgeNet(width, n_attributes), JudgeNet(width, n_attributes)

    @property
    def features(self) -> nn.Module:
        """The base judge's conv features (what the metric's a_jfd compares)."""
        return self.base.features

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        out = dict(self.base(images))
        rows = [ATTRIBUTES.index(a) for a in FRONT_ONLY]
        attributes = out["attributes"].clone()
        attributes[:, rows] = self.face(images)["attributes"][:, rows]
        out["attributes"] = attributes
        return out


def judge_input(images: Tensor) -> Tensor:
    """Images [B, 3, H, W] in [0, 1] as the judge reads them: floats resized to 32x32 (bilinear,
    antialiased), clamped to [0, 1]."""
    x = images.float()
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


def save_judge(net: nn.Module, record: dict, folder: str) -> None:
    """Write a judge folder: the weights in fp16 (other tensors as they are) and ``record`` as
    judge.json (``Judge.load`` reads both)."""
    os.makedirs(folder, exist_ok=True)
    save_safetensors({k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.contiguous()
                      for k, v in net.state_dict().items()}, os.path.join(folder, WEIGHTS))
    with open(os.path.join(folder, CONFIG), "w") as f:
        json.dump(record, f, indent=2)


def judge_identity(folder: str) -> str:
    """What a judge folder's verdicts depend on: its weights and, when its record sets one, its
    orbit face window (other files, e.g. timings, change no verdict). A judge without a window is
    named by its weights' SHA-256 alone, as before windows existed."""
    weights = sha256(os.path.join(folder, WEIGHTS))
    with open(os.path.join(folder, CONFIG)) as f:
        window = json.load(f).get(ORBIT_WINDOW, 0.0)
    if not window:
        return weights
    return hashlib.sha256(json.dumps({"weights": weights, ORBIT_WINDOW: float(window)}, sort_keys=True).encode()).hexdigest()


class Judge:
    """The trained judge: ``Judge.load(folder)(images)`` -> predictions."""

    def __init__(self, net: JudgeNet, record: dict) -> None:
        self.net = net.eval()
        self.record = record

    @classmethod
    def load(cls, folder: str, device: str = "cpu") -> "Judge":
        with open(os.path.join(folder, CONFIG)) as f:
            record = json.load(f)
        kind = PairedJudgeNet if record.get("architecture") == "paired" else JudgeNet
        net = kind(record["settings"]["width"], len(record.get("attributes", ATTRIBUTES)))
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(os.path.join(folder, WEIGHTS)).items()}
        net.load_state_dict(state)
        return cls(net.to(device), record)

    @property
    def orbit_face_window_deg(self) -> float:
        """On an orbit, a frame's front-only probabilities are averaged over the frames within this
        many degrees of azimuth (``janus.window_mean``) before its verdict; 0 (no window) unless
        the judge's record sets one (preregistration.md, thirteenth entry)."""
        return float(self.record.get(ORBIT_WINDOW, 0.0))

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Dict[str, Tensor]:
        """Images [B, 3, H, W] in [0, 1] (resized to 32x32) -> ``view`` [B] (index into VIEWS),
        ``kind`` [B] (index into KINDS), ``attributes`` [B, len(ATTRIBUTES)] (bool, ATTRIBUTES order), and the
        probabilities ``view_probs``, ``kind_probs``, ``attribute_probs``."""
        device = next(self.net.parameters()).device
        out = self.net(judge_input(images.to(device)))
        probs = torch.sigmoid(out["attributes"])
        return {"view": out["view"].argmax(-1), "kind": out["kind"].argmax(-1), "attributes": probs > 0.5,
                "view_probs": out["view"].softmax(-1), "kind_probs": out["kind"].softmax(-1),
                "attribute_probs": probs}
