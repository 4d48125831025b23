"""The judge's face verdict calibrated on labelled method outputs (preregistration.md, ninth entry).

A linear probe of the judge's 256-d features (``JudgeNet.hidden``) is fit to the reference
"face visible" labels of a development set (every decided frame of its orbits and every decided
image): L2-regularised logistic regression on standardised features. It is written into the
judge's ``face`` and ``smiling`` rows (the front-only attributes, ``world.FRONT_ONLY``), so a
calibrated judge is a judge folder like any other and "a front-only attribute visible" is the
probe's verdict at the judge's own 0.5. Everything else of the judge (view, kind, other
attributes, camera) is unchanged. ``cross_validate`` estimates the gate's 3D figures on the
development set itself (folds of whole orbits), before any other set is judged.
"""

from __future__ import annotations

import json
import os
import random
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .janus import orbit_outcome
from .judge import WEIGHTS, Judge, JudgeNet, save_judge
from .label_agreement import FACE_FIELDS, UNCLEAR, is_janus
from .label_sets import Item, item_images, read_manifest, shown_frame_indices
from .model_files import sha256
from .orbits import orbit_azimuths
from .volume_orbits import load_orbit_frames
from .world import ATTRIBUTES, FRONT_ONLY, IMAGE_SIZE

WEIGHT_DECAY = 1e-3  # the ninth entry's choice (grouped cross-validation on set A)


@torch.no_grad()
def judge_features(net: JudgeNet, images: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> the judge's hidden features [B, 256] (the input of its heads)."""
    x = images.float()
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return net.hidden(net.features(x.clamp(0.0, 1.0) * 2.0 - 1.0))


def fit_probe(features: Tensor, labels: Tensor, weight_decay: float = WEIGHT_DECAY) -> Tuple[Tensor, Tensor]:
    """Logistic regression of ``labels`` [N] (0 / 1) on ``features`` [N, D], standardised, with
    ``weight_decay`` * |w|^2; returns (weight [D], bias []) on the raw features."""
    if labels.min() == labels.max():
        raise ValueError("a probe needs both labels (face and no face) among its examples")
    mean, std = features.mean(0), features.std(0) + 1e-4
    x = (features - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, labels.float()) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight = (w / std).detach()
    return weight, (b - (mean * weight).sum()).detach()


class Orbit:
    """An orbit item's features (all frames), azimuths and reference frame labels."""

    def __init__(self, item: Item, net: JudgeNet, labels: Dict[str, str]) -> None:
        frames = load_orbit_frames(item.source)
        self.id, self.features = item.id, judge_features(net, frames)
        self.azimuths = [float(a) for a in orbit_azimuths(frames.shape[0])]
        self.shown = shown_frame_indices(frames.shape[0])
        self.labels = labels

    def decided(self) -> List[Tuple[int, float]]:
        """(frame index, 1.0 face / 0.0 no face) of every shown frame the reference decides."""
        return [(i, float(self.labels[f] == "yes"))
                for i, f in zip(self.shown, FACE_FIELDS) if self.labels.get(f, UNCLEAR) != UNCLEAR]

    def examples(self) -> List[Tuple[Tensor, float]]:
        return [(self.features[i], y) for i, y in self.decided()]


def load_set(set_folder: str, net: JudgeNet) -> Tuple[List[Orbit], List[Tuple[str, Tensor, float]]]:
    """The set's referenced orbits and its decided images (id, features, face label)."""
    with open(os.path.join(set_folder, "reference.json")) as f:
        ref = json.load(f)["labels"]
    items = [i for i in read_manifest(set_folder) if i.id in ref]
    orbits = [Orbit(i, net, ref[i.id]) for i in items if i.kind == "orbit"]
    images = [i for i in items if i.kind == "image" and ref[i.id].get("face", UNCLEAR) != UNCLEAR]
    feats = judge_features(net, torch.stack([item_images(i)[0] for i in images])) if images else torch.zeros(0, 256)
    return orbits, [(i.id, feats[k], float(ref[i.id]["face"] == "yes")) for k, i in enumerate(images)]


def _stack(examples) -> Tuple[Tensor, Tensor]:
    return torch.stack([e[0] for e in examples]), torch.tensor([e[1] for e in examples])


def fit_on(orbits: List[Orbit], images, weight_decay: float) -> Tuple[Tensor, Tensor]:
    return fit_probe(*_stack([e for o in orbits for e in o.examples()] + [(f, y) for _, f, y in images]), weight_decay)


def cross_validate(orbits: List[Orbit], images, weight_decay: float = WEIGHT_DECAY, folds: int = 8,
                   seed: int = 0) -> Dict[str, float]:
    """The gate's figures on the development set, each item judged by a probe fit without its fold
    (orbits in ``folds`` random folds, images likewise): frame face, orbit outcome (the metric's
    rule on all frames), Janus / not, image face; clear reference items only."""
    order = sorted(o.id for o in orbits)
    random.Random(seed).shuffle(order)
    fold = {oid: k % folds for k, oid in enumerate(order)}
    image_fold = {iid: k % folds for k, (iid, _, _) in enumerate(sorted(images, key=lambda e: e[0]))}
    hits = {"frame_face": [], "outcome": [], "janus": [], "image_face": []}
    for k in range(folds):
        w, b = fit_on([o for o in orbits if fold[o.id] != k], [e for e in images if image_fold[e[0]] != k], weight_decay)
        for o in (o for o in orbits if fold[o.id] == k):
            face = (o.features @ w + b) > 0
            hits["frame_face"] += [bool(face[i]) == (y == 1.0) for i, y in o.decided()]
            if o.labels["outcome"] != UNCLEAR:
                outcome = orbit_outcome(o.azimuths, face.tolist())
                hits["outcome"].append(outcome == o.labels["outcome"])
                hits["janus"].append(is_janus(outcome) == is_janus(o.labels["outcome"]))
        hits["image_face"] += [bool(f @ w + b > 0) == (y == 1.0) for iid, f, y in images if image_fold[iid] == k]
    return {key: sum(v) / len(v) for key, v in hits.items() if v}


def calibrate(judge_folder: str, set_folder: str, out_folder: str, weight_decay: float = WEIGHT_DECAY,
              folds: int = 8) -> Dict[str, object]:
    """Fit the probe on the whole set, write the calibrated judge to ``out_folder``, return its record
    (with the cross-validated figures)."""
    torch.set_num_threads(1)
    judge = Judge.load(judge_folder)
    orbits, images = load_set(set_folder, judge.net)
    cv = cross_validate(orbits, images, weight_decay, folds)
    weight, bias = fit_on(orbits, images, weight_decay)
    net = judge.net
    with torch.no_grad():
        for attribute in FRONT_ONLY:
            net.attributes.weight[ATTRIBUTES.index(attribute)] = weight
            net.attributes.bias[ATTRIBUTES.index(attribute)] = bias
    examples = [e for o in orbits for e in o.examples()] + [(f, y) for _, f, y in images]
    record = dict(judge.record)
    record["calibration"] = {
        "what": f"rows {list(FRONT_ONLY)} of the attribute head replaced by one linear probe of the hidden "
                "features, fit to the labelled 'face visible' of the set (janus_lab.judge_calibration)",
        "base_judge": judge_folder, "base_weights_sha256": sha256(os.path.join(judge_folder, WEIGHTS)),
        "set": set_folder, "reference_sha256": sha256(os.path.join(set_folder, "reference.json")),
        "weight_decay": weight_decay, "frames": sum(len(o.examples()) for o in orbits), "images": len(images),
        "faces": int(sum(y for _, y in examples)), "cross_validated": {"folds": folds, **cv},
    }
    save_judge(net, record, out_folder)
    return record
