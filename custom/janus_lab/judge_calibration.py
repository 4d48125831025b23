"""The judge's face verdict calibrated on labelled method outputs (preregistration.md, ninth and
tenth entries).

A linear probe of the judge's 256-d features (``JudgeNet.hidden``) is fit to the labellers'
"face visible" on development sets (every shown frame of their orbits, every image):
L2-regularised logistic regression on standardised features, its target either the reference
label (``targets="reference"``, judge v10) or the share of labellers who said "yes"
(``targets="votes"``, judge v11: the probability that a person sees a face). With a
``threshold`` t the probe says "face" where that probability exceeds t. It is written into the
judge's ``face`` and ``smiling`` rows (the front-only attributes, ``world.FRONT_ONLY``), its bias
shifted by logit(t), so a calibrated judge is a judge folder like any other and "a front-only
attribute visible" is the probe's verdict at the judge's own 0.5. The rest of the judge (view,
kind, other attributes, camera) is unchanged. ``cross_validate`` estimates the gate's figures on
the development sets (folds of prompt-and-seed groups; and each set judged by a verdict fit on
the others, i.e. by other people's labels) before any other set is judged.

``method="finetune"`` (judge v12, twelfth entry) fits a copy of the whole network to the face
targets instead of a probe (Adam, horizontal flips), its ``smiling`` row set to its ``face`` row,
both shifted by the threshold; the calibrated judge pairs it with the base judge
(``judge.PairedJudgeNet``): the face verdict from the fine-tuned copy, everything else (view,
kind, other attributes, camera) from the base judge, unchanged.

``orbit_window_deg`` (judge v13, thirteenth entry) is written into the calibrated judge's record
(``judge.ORBIT_WINDOW``): on an orbit its face probabilities are averaged over the frames within
that azimuth before the verdict (``janus.window_mean``), here as in every orbit the judge judges.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .janus import duplicate_azimuths, orbit_outcome, window_mean
from .judge import ORBIT_WINDOW, WEIGHTS, Judge, JudgeNet, PairedJudgeNet, judge_input, save_judge
from .label_agreement import FACE_FIELDS, UNCLEAR, is_janus, labeller_files
from .label_sets import Item, item_images, read_manifest, shown_frame_indices
from .model_files import sha256
from .orbits import orbit_azimuths
from .volume_orbits import load_orbit_frames
from .world import ATTRIBUTES, FRONT_ONLY

WEIGHT_DECAY = 1e-3  # the ninth entry's choice (grouped cross-validation on set A)
TARGETS = ("reference", "votes")
METHODS = ("probe", "finetune")
FIGURES = ("frame_face", "outcome", "janus", "image_face")  # what score() and cross_validate() report
FINETUNE = {"epochs": 10, "lr": 1e-4, "weight_decay": 1e-4, "batch": 64}  # the twelfth entry's choice


@torch.no_grad()
def hidden_features(net: JudgeNet, images: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> the judge's hidden features [B, 256] (the input of its heads)."""
    return net.embed(judge_input(images))


def fit_probe(features: Tensor, labels: Tensor, weight_decay: float = WEIGHT_DECAY) -> Tuple[Tensor, Tensor]:
    """Logistic regression of ``labels`` [N] (in [0, 1]: 0 / 1 or a share of votes) on ``features``
    [N, D], standardised, with ``weight_decay`` * |w|^2; returns (weight [D], bias []) on the raw
    features."""
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
    """An orbit item's features (all frames), azimuths, reference labels and face targets."""

    def __init__(self, item: Item, net: JudgeNet, labels: Dict[str, str], targets: Dict[str, float]) -> None:
        frames = load_orbit_frames(item.source)
        self.id, self.frames, self.features = item.id, frames, hidden_features(net, frames)
        self.azimuths = [float(a) for a in orbit_azimuths(frames.shape[0])]
        self.shown = dict(zip(FACE_FIELDS, shown_frame_indices(frames.shape[0])))
        self.labels, self.targets = labels, targets

    def decided(self) -> List[Tuple[int, float]]:
        """(frame index, 1.0 face / 0.0 no face) of every shown frame the reference decides."""
        return [(self.shown[f], float(self.labels[f] == "yes")) for f in FACE_FIELDS
                if self.labels.get(f, UNCLEAR) != UNCLEAR]

    def examples(self, images: bool = False) -> List[Tuple[Tensor, float]]:
        """(features, or with ``images`` the frame itself, target) of every frame with a target."""
        source = self.frames if images else self.features
        return [(source[self.shown[f]], y) for f, y in self.targets.items()]


class LabelledSet:
    """A labelled set's orbits and images as features, reference labels and face targets."""

    def __init__(self, folder: str, net: JudgeNet, targets: str) -> None:
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, not {targets!r}")
        with open(os.path.join(folder, "reference.json")) as f:
            ref = json.load(f)["labels"]
        votes = labeller_files(folder)
        if targets == "votes" and not votes:
            raise ValueError(f"{folder} has no labels-<name>-*.csv: the votes targets need the labellers' files")
        items = [i for i in read_manifest(folder) if i.id in ref]
        self.groups = {i.id: item_group(i) for i in items}
        self.folder = folder
        self.orbits = [Orbit(i, net, ref[i.id], face_targets(i.id, FACE_FIELDS, ref, votes, targets))
                       for i in items if i.kind == "orbit"]
        images = [i for i in items if i.kind == "image"]
        pixels = torch.stack([item_images(i)[0] for i in images]) if images else None
        feats = hidden_features(net, pixels) if images else None
        self.pixels = {i.id: pixels[k] for k, i in enumerate(images)}
        self.images = [(i.id, feats[k], ref[i.id].get("face", UNCLEAR), face_targets(i.id, ("face",), ref, votes, targets))
                       for k, i in enumerate(images)]

    def examples(self, orbit_ids=None, image_ids=None, images: bool = False) -> List[Tuple[Tensor, float]]:
        """(features, or with ``images`` the image, target) of the chosen items (default: all)."""
        out = [e for o in self.orbits if orbit_ids is None or o.id in orbit_ids for e in o.examples(images)]
        return out + [(self.pixels[iid] if images else f, y) for iid, f, _, t in self.images
                      if image_ids is None or iid in image_ids for y in t.values()]


def item_group(item: Item) -> Tuple:
    """Items that share an initialisation: an orbit's prompt and seed (its variants), an image's
    kind, requested view and seed (its methods)."""
    meta = item.meta
    if item.kind == "orbit":
        return ("orbit", meta.get("prompt"), meta.get("seed"))
    return ("image", meta.get("kind"), meta.get("view"), meta.get("seed"))


def face_targets(item: str, fields: Sequence[str], ref, votes, targets: str) -> Dict[str, float]:
    """field -> target: the reference's yes / no (1 / 0; unclear left out), or the share of the
    labellers' yes among their yes / no votes (no vote: left out)."""
    out = {}
    for field in fields:
        if targets == "reference":
            if ref[item].get(field, UNCLEAR) != UNCLEAR:
                out[field] = float(ref[item][field] == "yes")
            continue
        said = [labels[item][field] for labels in votes.values() if item in labels and field in labels[item]]
        said = [v for v in said if v != UNCLEAR]
        if said:
            out[field] = sum(v == "yes" for v in said) / len(said)
    return out


def threshold_logit(threshold: float) -> float:
    return math.log(threshold / (1.0 - threshold))


class Probe:
    """A face probability from the judge's features: sigmoid(features @ weight + bias)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        self.weight, self.bias = weight, bias

    def probability(self, features: Tensor, images: Tensor) -> Tensor:
        return torch.sigmoid(features @ self.weight + self.bias)

    def into(self, net: JudgeNet) -> JudgeNet:
        with torch.no_grad():
            for attribute in FRONT_ONLY:
                net.attributes.weight[ATTRIBUTES.index(attribute)] = self.weight
                net.attributes.bias[ATTRIBUTES.index(attribute)] = self.bias
        return net


class Finetuned:
    """A face probability from a fine-tuned network's own face logit (threshold already in its bias)."""

    def __init__(self, net: JudgeNet) -> None:
        self.net = net.eval()

    @torch.no_grad()
    def probability(self, features: Tensor, images: Tensor) -> Tensor:
        return torch.sigmoid(self.net(judge_input(images))["attributes"][:, ATTRIBUTES.index("face")])

    def into(self, net: JudgeNet) -> PairedJudgeNet:
        paired = PairedJudgeNet()
        paired.base, paired.face = net, self.net
        return paired.eval()


def fit_probe_on(examples: List[Tuple[Tensor, float]], weight_decay: float, threshold: float) -> Probe:
    """The probe on (features, target) ``examples`` with the face threshold folded into its bias."""
    weight, bias = fit_probe(torch.stack([e[0] for e in examples]), torch.tensor([e[1] for e in examples]),
                             weight_decay)
    return Probe(weight, bias - threshold_logit(threshold))


def finetune_on(base: JudgeNet, examples: List[Tuple[Tensor, float]], threshold: float, epochs: int = 10,
                lr: float = 1e-4, weight_decay: float = 1e-4, batch: int = 64, seed: int = 0) -> Finetuned:
    """A copy of the whole network fit to (image, target) ``examples``: Adam, horizontal flips, BCE
    on the face logit; then its smiling row set to its face row and both shifted by the threshold."""
    images = judge_input(torch.stack([e[0] for e in examples]))
    targets = torch.tensor([e[1] for e in examples])
    net = copy.deepcopy(base).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    face = ATTRIBUTES.index("face")
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for k in range(0, len(images), batch):
            idx = order[k:k + batch]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx])
            loss = F.binary_cross_entropy_with_logits(net(x)["attributes"][:, face], targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        net.attributes.bias[face] -= threshold_logit(threshold)
        smiling = ATTRIBUTES.index("smiling")
        net.attributes.weight[smiling] = net.attributes.weight[face]
        net.attributes.bias[smiling] = net.attributes.bias[face]
    return Finetuned(net)


def orbit_face(verdict, orbit: Orbit, window_deg: float) -> Tensor:
    """[N] bool: the verdict's face on every frame of the orbit, its probabilities read over the
    window (as ``janus.judge_orbit`` reads a judge with that window)."""
    p = verdict.probability(orbit.features, orbit.frames)
    azimuth = torch.tensor(orbit.azimuths)
    return window_mean(p[:, None], azimuth, window_deg, ~duplicate_azimuths(azimuth))[:, 0] > 0.5


def score(sets: Sequence[LabelledSet], verdict, orbit_ids=None, image_ids=None, window_deg: float = 0.0
          ) -> Dict[str, List[bool]]:
    """The gate's 3D figures and image face as hit lists, on the chosen items, against the reference."""
    hits = {key: [] for key in FIGURES}
    for s in sets:
        for o in (o for o in s.orbits if orbit_ids is None or (s.folder, o.id) in orbit_ids):
            face = orbit_face(verdict, o, window_deg)
            hits["frame_face"] += [bool(face[i]) == (y == 1.0) for i, y in o.decided()]
            if o.labels["outcome"] != UNCLEAR:
                outcome = orbit_outcome(o.azimuths, face.tolist())
                hits["outcome"].append(outcome == o.labels["outcome"])
                hits["janus"].append(is_janus(outcome) == is_janus(o.labels["outcome"]))
        chosen = [(iid, f, label) for iid, f, label, _ in s.images
                  if label != UNCLEAR and (image_ids is None or (s.folder, iid) in image_ids)]
        if chosen:  # one call for the set's images
            p = verdict.probability(torch.stack([f for _, f, _ in chosen]),
                                    torch.stack([s.pixels[iid] for iid, _, _ in chosen]))
            hits["image_face"] += [bool(pi > 0.5) == (label == "yes") for pi, (_, _, label) in zip(p, chosen)]
    return hits


def _rates(hits: Dict[str, List[bool]]) -> Dict[str, float]:
    return {key: sum(v) / len(v) for key, v in hits.items() if v}


def fitter(method: str, base: JudgeNet, weight_decay: float, threshold: float) -> Callable:
    """(sets, orbit keys or None, image keys or None) -> a face verdict fit on those items."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")

    def fit(sets, orbit_ids=None, image_ids=None):
        chosen = [e for s in sets for e in s.examples(
            None if orbit_ids is None else {o for f, o in orbit_ids if f == s.folder},
            None if image_ids is None else {i for f, i in image_ids if f == s.folder}, images=method == "finetune")]
        if method == "probe":
            return fit_probe_on(chosen, weight_decay, threshold)
        return finetune_on(base, chosen, threshold, **FINETUNE)

    return fit


def cross_validate(sets: Sequence[LabelledSet], fit: Callable, folds: int = 8, seed: int = 0, window_deg: float = 0.0
                   ) -> Dict[str, Dict[str, float]]:
    """The gate's figures on the development sets, each item judged by a verdict fit without it:
    ``pooled`` (``folds`` random folds over all sets, none with ``folds`` 0; an item's fold is its
    group's, ``LabelledSet.groups``: the orbits of one prompt and seed, the images of one kind, view
    and seed, so that no near-twin of a held-out item is trained on) and, with two sets or more,
    ``across_sets`` (each set judged by a verdict fit on the others: other labellers); orbits read
    over the face window ``window_deg``."""
    if folds == 1:
        raise ValueError("folds must be 0 (none) or at least 2")
    out = {}
    if folds:
        orbits = sorted((s.folder, o.id) for s in sets for o in s.orbits)
        images = sorted((s.folder, i[0]) for s in sets for i in s.images)
        group = {(s.folder, i): (s.folder, *s.groups[i]) for s in sets for i in s.groups}
        names = sorted(set(group.values()))
        random.Random(seed).shuffle(names)
        fold_of_group = {name: k % folds for k, name in enumerate(names)}
        fold = {key: fold_of_group[group[key]] for key in orbits + images}
        pooled = {key: [] for key in FIGURES}
        for k in range(folds):
            train = {key for key in orbits + images if fold[key] != k}
            verdict = fit(sets, train & set(orbits), train & set(images))
            for key, v in score(sets, verdict, {x for x in orbits if fold[x] == k},
                                {x for x in images if fold[x] == k}, window_deg).items():
                pooled[key] += v
        out["pooled"] = _rates(pooled)
    if len(sets) > 1:
        across = {key: [] for key in FIGURES}
        for held in sets:
            verdict = fit([s for s in sets if s is not held])
            for key, v in score([held], verdict, window_deg=window_deg).items():
                across[key] += v
        out["across_sets"] = _rates(across)
    return out


def calibrate(judge_folder: str, set_folders: Sequence[str], out_folder: str, weight_decay: float = WEIGHT_DECAY,
              threshold: float = 0.5, targets: str = "reference", folds: int = 8, method: str = "probe",
              orbit_window_deg: float = 0.0) -> Dict[str, object]:
    """Fit the face verdict on all the sets, write the calibrated judge to ``out_folder``, return its
    record (with the cross-validated figures)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), not {threshold}")
    if not 0.0 <= orbit_window_deg < 180.0:
        raise ValueError(f"orbit_window_deg must be in [0, 180) degrees, not {orbit_window_deg}")
    torch.set_num_threads(1)
    judge = Judge.load(judge_folder)
    if judge.record.get("architecture") == "paired":
        raise ValueError(f"{judge_folder} is already a calibrated (paired) judge: calibrate its base judge instead")
    sets = [LabelledSet(folder, judge.net, targets) for folder in set_folders]
    fit = fitter(method, judge.net, weight_decay, threshold)
    cv = cross_validate(sets, fit, folds, window_deg=orbit_window_deg)
    net = fit(sets).into(copy.deepcopy(judge.net))
    examples = [e for s in sets for e in s.examples()]
    # the base's own record (architecture settings kept on top, its held-out figures nested: they
    # are the base judge's, not the calibrated face verdict's)
    record = {"settings": judge.record["settings"], "attributes": judge.record.get("attributes", list(ATTRIBUTES)),
              "base_record": judge.record, **({"architecture": "paired"} if method == "finetune" else {}),
              **({ORBIT_WINDOW: orbit_window_deg} if orbit_window_deg else {})}
    what = (f"rows {list(FRONT_ONLY)} of the attribute head replaced by one linear probe of the hidden features"
            if method == "probe" else
            f"rows {list(FRONT_ONLY)} from a copy of the network fine-tuned on the face (PairedJudgeNet), the rest "
            "the base judge's")
    record["calibration"] = {
        "what": what + ", fit to the labelled 'face visible' of the sets (janus_lab.judge_calibration)",
        "method": method, **({"finetune": FINETUNE} if method == "finetune" else {}),
        "base_judge": judge_folder, "base_weights_sha256": sha256(os.path.join(judge_folder, WEIGHTS)),
        "sets": {folder: sha256(os.path.join(folder, "reference.json")) for folder in set_folders},
        "targets": targets, "weight_decay": weight_decay if method == "probe" else FINETUNE["weight_decay"],
        "threshold": threshold,
        "frames": sum(len(o.targets) for s in sets for o in s.orbits),
        "images": sum(len(t) for s in sets for *_, t in s.images),
        "faces": round(float(sum(y for _, y in examples)), 3),
        "cross_validated": {"folds": folds, **cv},
    }
    save_judge(net, record, out_folder)
    return record
