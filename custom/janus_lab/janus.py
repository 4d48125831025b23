"""The Janus metric of a 3D result, from its orbit, judged by the lab judge (issue 15, item 2).

An orbit is N renders of the result at one elevation and N azimuths (threestudio's test split:
``linspace(0, 360, N)``; a last frame that repeats the first azimuth is counted once). The judge
gives every frame a view region and the visible attributes. Definitions (fixed before any
method's results were seen):

* **front-only attribute seen from the back** (``face_in_back``): the face or the smile (the
  world's FRONT_ONLY attributes) is judged visible in frames whose camera lies in the back region
  (|azimuth| > 135, threestudio's default back range) that form a run of at least
  ``min_segment_deg`` degrees of azimuth;
* **front segments** (``front_segments``): the frames judged "front", as runs on the circle of
  azimuths, after closing gaps narrower than ``min_gap_deg`` (one misjudged frame inside a front
  run does not split it) and then dropping runs narrower than ``min_segment_deg`` (one frame
  misjudged "front" elsewhere is not a second front);
* **Janus** (``janus``): ``face_in_back`` or ``front_segments >= 2``.

A run of k frames spans ``k * step`` degrees (step: the orbit's azimuth spacing). With the
defaults (20 degrees each) a single frame never counts on orbits of 19 or more azimuths (step
< 20 degrees, e.g. 36 azimuths: runs of >= 2 frames count, 1-frame gaps close); on coarser orbits
one frame already spans 20 degrees and counts. Note that ``face_in_back`` also flags a
one-faced result turned around (its only face at the back): that is a failure of the view
conditioning, not two faces; ``janus_two_fronts`` (``front_segments >= 2``) tells them apart.

The **outcome** of an orbit (``docs/preregistration.md``, seventh entry, item 1; the headline, the
verdicts above stay beside it): frames "with a face" = a front-only attribute judged visible, over
the whole circle, in runs with the rules above (``face_segments``: how many). Exactly one of
``OUTCOMES``: ``janus`` (``face_in_back``, or ``face_segments >= 2``), ``one_face_front``
(otherwise one face run that overlaps the front region, |azimuth| < 45), ``face_elsewhere``
(otherwise one face run, only on a side) or ``no_face`` (no face run). ``outcome`` is its index
in ``OUTCOMES`` (metrics are numbers), ``outcome_<name>`` its one-hot columns. ``orbit_outcome``
applies the same rule to face verdicts from elsewhere (e.g. labellers' per-frame labels).

Also:

* ``face_in_front``: share of the frames whose camera lies in the front region (|azimuth| < 45)
  in which a front-only attribute is judged visible: whether the result has a face where it
  should. Janus 0 with ``face_in_front`` near 0 is a result without a face, not a cure;
* ``face_scrambled``: a control for the judge, not a property of the result: the share of frames
  judged to show a face after the object's pixels (those that differ from the frame's corner,
  the background) are shuffled within the frame (``images.scramble_object_pixels``, seed 0): the same
  colours without any structure. High values mean the judge's face verdicts on this kind of
  image are not evidence (it answers from colours, not from a face);
* ``view_accuracy``: share of frames whose judged view region equals the camera's region
  (threestudio's default ranges, ``world.view_region``);
* ``a_jfd``: the adjacent judge-feature distance, a stand-in for A-LPIPS. Real LPIPS needs
  VGG / AlexNet weights that cannot be had here, and LPIPS with random weights
  (``tools.metrics.LPIPS(random_weights=True)``) measures nothing. So ``a_jfd`` applies LPIPS's
  formula without its learned heads (the ``lpips`` package's uncalibrated "baseline" form: unit
  channel vectors, squared difference summed over channels, spatial mean, summed over layers) to
  the lab judge's own conv features (the activations entering each pooling layer), averaged over
  adjacent frames as A-LPIPS is (pairs (i, i+1) in the given order, no wrap-around). It is *not*
  LPIPS and its values are not comparable with published A-LPIPS figures; lower is smoother.
  When an ``LPIPS`` module is passed (``lpips=``), ``a_lpips`` is computed as well
  (``tools.metrics.a_lpips``).

``judge_orbit`` returns the per-frame details (for plots and tables: ``frame_rows``).
``orbits.render_creature_orbit`` renders constructed orbits with the world's ray caster: the ground-truth
creature, or a two-faced one (its front decals also on its back) for tests and illustrations;
``scripts/lab_constructed_orbits.py`` prints the metric on such orbits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from antijanus.tools.metrics import a_lpips
from .images import scramble_object_pixels
from .world import (ATTRIBUTES, BACK_THRESHOLD, FRONT_ONLY, FRONT_THRESHOLD, IMAGE_SIZE, KINDS, VIEWS, view_region,
                    wrap_azimuth)

MIN_SEGMENT_DEG = 20.0  # a run of frames counts when it spans at least this much azimuth
MIN_GAP_DEG = 20.0  # gaps narrower than this between two runs are closed
ATTRIBUTE_THRESHOLD = 0.5  # judged visible when the judge's probability exceeds this (its own rule)
FRONT = VIEWS.index("front")
OUTCOMES = ("janus", "one_face_front", "face_elsewhere", "no_face")  # the seventh entry's outcomes of an orbit


# ----------------------------------------------------------------------------- per frame


@dataclass
class OrbitFrames:
    """The judge's verdict on every frame of an orbit (original order)."""

    azimuth: Tensor  # [N] degrees, wrapped to [-180, 180)
    elevation: Tensor  # [N] degrees
    camera_view: Tensor  # [N] index into VIEWS: the camera's region
    judged_view: Tensor  # [N] index into VIEWS
    view_probs: Tensor  # [N, len(VIEWS)]
    judged_kind: Tensor  # [N] index into KINDS
    attribute_probs: Tensor  # [N, len(ATTRIBUTES)]
    front_only_visible: Tensor  # [N] bool: the face or the smile judged visible
    in_back: Tensor  # [N] bool: camera in the back region, |azimuth| > 180 - BACK_THRESHOLD
    duplicate: Tensor  # [N] bool: repeats an earlier frame's azimuth (counted once)

    @property
    def counted(self) -> Tensor:
        return ~self.duplicate


def judge_orbit(frames: Tensor, azimuths_deg: Tensor, elevation_deg: Union[float, Tensor], judge,
                attribute_threshold: float = ATTRIBUTE_THRESHOLD) -> OrbitFrames:
    """Judge every frame [N, 3, H, W] in [0, 1] of an orbit."""
    azimuth = wrap_azimuth(torch.as_tensor(azimuths_deg, dtype=torch.float32).reshape(-1).cpu())
    n = azimuth.shape[0]
    if frames.dim() != 4 or frames.shape[0] != n or n < 2:
        raise ValueError(f"an orbit needs frames [N, 3, H, W] and N >= 2 azimuths; got frames "
                         f"{tuple(frames.shape)} and {n} azimuths")
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float32).cpu()
    elevation = elevation.expand(n).clone() if elevation.dim() == 0 else elevation.reshape(-1)
    verdict = judge(frames)
    probs = verdict["attribute_probs"].float().cpu()
    front_only = [ATTRIBUTES.index(a) for a in FRONT_ONLY]
    duplicate = duplicate_azimuths(azimuth)
    seen = window_mean(probs[:, front_only], azimuth, getattr(judge, "orbit_face_window_deg", 0.0), ~duplicate)
    return OrbitFrames(
        azimuth=azimuth, elevation=elevation, camera_view=view_region(elevation, azimuth),
        judged_view=verdict["view"].cpu(), view_probs=verdict["view_probs"].float().cpu(),
        judged_kind=verdict["kind"].cpu(), attribute_probs=probs,
        front_only_visible=(seen > attribute_threshold).any(dim=1),
        in_back=azimuth.abs() > 180.0 - BACK_THRESHOLD, duplicate=duplicate)


def window_mean(values: Tensor, azimuth: Tensor, window_deg: float, counted: Optional[Tensor] = None) -> Tensor:
    """values [N, K] of an orbit's frames -> [N, K]: each frame's mean over the ``counted`` frames
    (default all) whose azimuth lies within ``window_deg`` of its own on the circle (itself
    included). ``window_deg`` 0 returns ``values``. A calibrated judge's face verdict on an orbit
    (``Judge.orbit_face_window_deg``, preregistration.md, thirteenth entry): a face on a body
    spans tens of degrees, so a frame's verdict is read with its neighbours'."""
    if not math.isfinite(window_deg) or window_deg < 0:
        raise ValueError(f"the orbit face window must be a finite number of degrees >= 0, not {window_deg}")
    if window_deg == 0:
        return values
    a = azimuth.reshape(-1, 1).double()
    d = (a - a.T).abs() % 360.0
    near = torch.minimum(d, 360.0 - d) <= window_deg + 1e-3
    if counted is not None:
        near = near & counted.reshape(1, -1)
        values = torch.where(counted.reshape(-1, 1), values, torch.zeros_like(values))  # no NaN from a left-out frame
    weights = near.to(values.dtype)
    return (weights @ values) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


def duplicate_azimuths(azimuth: Tensor, tolerance: float = 1e-3) -> Tensor:
    """True where a (wrapped) azimuth repeats an earlier one, e.g. threestudio's 360 after 0."""
    a = azimuth.tolist()
    return torch.tensor([any(_circular_distance(a[i], a[j]) < tolerance for j in range(i)) for i in range(len(a))])


def _circular_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def frame_rows(orbit: OrbitFrames) -> List[Dict[str, object]]:
    """One row per frame (for a CSV or a plot): azimuth, regions, view and attribute probabilities."""
    rows = []
    for i in range(orbit.azimuth.shape[0]):
        row: Dict[str, object] = {
            "azimuth": float(orbit.azimuth[i]), "elevation": float(orbit.elevation[i]),
            "camera_view": VIEWS[int(orbit.camera_view[i])], "judged_view": VIEWS[int(orbit.judged_view[i])],
            "judged_kind": KINDS[int(orbit.judged_kind[i])],
            "front_only_visible": bool(orbit.front_only_visible[i]), "in_back": bool(orbit.in_back[i]),
            "duplicate": bool(orbit.duplicate[i])}
        row.update({f"p_{v}": float(orbit.view_probs[i, j]) for j, v in enumerate(VIEWS)})
        row.update({f"p_{a}": float(p) for a, p in zip(ATTRIBUTES, orbit.attribute_probs[i])})
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- runs on the circle


def orbit_order(azimuth: Tensor) -> Tuple[List[int], float, bool]:
    """Frame indices sorted by azimuth, the spacing (degrees) and whether the frames close the
    circle. The frames must be uniformly spaced (a clear error otherwise)."""
    order = sorted(range(azimuth.shape[0]), key=lambda i: float(azimuth[i]))
    a = [float(azimuth[i]) for i in order]
    if len(a) < 2:
        raise ValueError("an orbit needs at least two distinct azimuths")
    gaps = [a[i + 1] - a[i] for i in range(len(a) - 1)]
    closing = a[0] + 360.0 - a[-1]
    step = sorted(gaps)[len(gaps) // 2]
    if step <= 0 or max(gaps) > 1.5 * step:
        raise ValueError(f"orbit azimuths must be uniformly spaced; sorted gaps {gaps}")
    return order, step, closing <= 1.5 * step


def runs(mask: Sequence[bool], circular: bool) -> List[Tuple[int, int]]:
    """Maximal runs of True as (start, length); on a circle a run may wrap past the end."""
    n = len(mask)
    if n == 0 or not any(mask):
        return []
    if all(mask):
        return [(0, n)]
    # on a circle, scan from just after a False so that no run is cut at the seam
    start = next(i for i in range(n) if not mask[i - 1]) if circular else 0
    found, i = [], 0
    while i < n:
        if mask[(start + i) % n]:
            first, length = (start + i) % n, 0
            while i < n and mask[(start + i) % n]:
                length, i = length + 1, i + 1
            found.append((first, length))
        else:
            i += 1
    return found


def _set(mask: List[bool], start: int, length: int, value: bool) -> None:
    for k in range(length):
        mask[(start + k) % len(mask)] = value


def robust_runs(mask: Sequence[bool], step: float, circular: bool, min_segment_deg: float = MIN_SEGMENT_DEG,
                min_gap_deg: float = MIN_GAP_DEG) -> List[Tuple[int, int]]:
    """Runs of True after closing gaps narrower than ``min_gap_deg`` between two runs and then
    dropping runs narrower than ``min_segment_deg`` (a run of k frames spans k * step degrees)."""
    mask = list(map(bool, mask))
    n = len(mask)
    if any(mask):
        gaps = runs([not m for m in mask], circular)
        for start, length in gaps:
            inside = circular or (start > 0 and start + length < n)  # between two runs
            if inside and length * step < min_gap_deg - 1e-6:
                _set(mask, start, length, True)
    for start, length in runs(mask, circular):
        if length * step < min_segment_deg - 1e-6:
            _set(mask, start, length, False)
    return runs(mask, circular)


# ----------------------------------------------------------------------------- the outcome of an orbit


def face_outcome(face: Sequence[bool], azimuth: Sequence[float], step: float, circular: bool,
                 min_segment_deg: float = MIN_SEGMENT_DEG, min_gap_deg: float = MIN_GAP_DEG
                 ) -> Tuple[str, List[Tuple[int, int]], List[Tuple[int, int]]]:
    """(outcome, face runs, face runs in the back region) of face verdicts and wrapped azimuths
    in azimuth order (``orbit_order``'s): the seventh entry's rule, item 1."""
    face = [bool(f) for f in face]
    back = [f and abs(a) > 180.0 - BACK_THRESHOLD for f, a in zip(face, azimuth)]
    face_runs = robust_runs(face, step, circular, min_segment_deg, min_gap_deg)
    back_runs = robust_runs(back, step, circular, min_segment_deg, min_gap_deg)  # as face_in_back
    if back_runs or len(face_runs) >= 2:
        return "janus", face_runs, back_runs
    if not face_runs:
        return "no_face", face_runs, back_runs
    start, length = face_runs[0]
    front = any(abs(azimuth[(start + k) % len(face)]) < FRONT_THRESHOLD for k in range(length))
    return ("one_face_front" if front else "face_elsewhere"), face_runs, back_runs


def outcome_name(metrics: Dict[str, float]) -> str:
    """The outcome's name from an orbit's metrics (``outcome``: its index in ``OUTCOMES``)."""
    return OUTCOMES[int(metrics["outcome"])]


def _verdict(value: Any) -> bool:
    if value is None or value not in (True, False):
        raise ValueError(f"a frame's face verdict must be True or False (decide unclear frames first); got {value!r}")
    return bool(value)


def orbit_outcome(frames: Any, face_visible: Any = None, min_segment_deg: float = MIN_SEGMENT_DEG,
                  min_gap_deg: float = MIN_GAP_DEG) -> str:
    """The outcome (one of ``OUTCOMES``) of per-frame face verdicts: ``frames`` a sequence of
    (azimuth_deg, face_visible) pairs, or azimuths [N] with ``face_visible`` [N] (lists or
    tensors). Azimuths uniformly spaced, in any order; a repeated azimuth counts once (its first)."""
    if face_visible is None:
        pairs = list(frames)
        frames, face_visible = [float(a) for a, _ in pairs], [f for _, f in pairs]
    azimuth = wrap_azimuth(torch.as_tensor(frames, dtype=torch.float32).reshape(-1).cpu())
    faces = [_verdict(f) for f in (face_visible.reshape(-1) if isinstance(face_visible, Tensor) else face_visible)]
    if len(faces) != azimuth.shape[0]:
        raise ValueError(f"{azimuth.shape[0]} azimuths but {len(faces)} face verdicts")
    kept = [i for i, d in enumerate(duplicate_azimuths(azimuth).tolist()) if not d]
    order, step, circular = orbit_order(azimuth[kept])
    order = [kept[i] for i in order]
    return face_outcome([faces[i] for i in order], [float(azimuth[i]) for i in order], step, circular,
                        min_segment_deg, min_gap_deg)[0]


# ----------------------------------------------------------------------------- the metric


def judge_features(judge) -> nn.Module:
    """The judge's feature extractor (its ``net.features``)."""
    return judge.net.features


@torch.no_grad()
def judge_feature_taps(judge, images: Tensor) -> List[Tensor]:
    """The judge's conv activations entering each pooling layer (LPIPS reads the activations
    before each down-sampling), images resized to 32x32 and mapped as the judge maps them."""
    features = judge_features(judge)
    device = next(features.parameters()).device
    x = images.float().to(device).clamp(0.0, 1.0)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    taps: List[Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: taps.append(args[0]))
             for m in features.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    try:
        out = features(x * 2.0 - 1.0)  # JudgeNet.forward's input mapping
    finally:
        for hook in hooks:
            hook.remove()
    return taps or [out]


def judge_feature_distance(judge, x: Tensor, y: Tensor) -> Tensor:
    """LPIPS's formula without learned weights on the judge's features: sum over layers of the
    spatial mean of ||u(f_x) - u(f_y)||^2, u = unit vector over channels. [B] for [B, 3, H, W]."""
    total = None
    for fx, fy in zip(judge_feature_taps(judge, x), judge_feature_taps(judge, y)):
        fx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        fy = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        d = (fx - fy).pow(2).sum(dim=1).mean(dim=(1, 2))
        total = d if total is None else total + d
    return total.cpu()


def a_jfd(frames: Tensor, judge) -> float:
    """Mean judge-feature distance between adjacent frames (i, i+1), as A-LPIPS averages LPIPS."""
    return float(judge_feature_distance(judge, frames[:-1], frames[1:]).mean())


def orbit_metrics(frames: Tensor, azimuths_deg: Tensor, elevation_deg: Union[float, Tensor], judge,
                  min_segment_deg: float = MIN_SEGMENT_DEG, min_gap_deg: float = MIN_GAP_DEG,
                  kind: Optional[str] = None, lpips: Optional[nn.Module] = None,
                  attribute_threshold: float = ATTRIBUTE_THRESHOLD) -> Dict[str, float]:
    """The Janus metric and its companions for one orbit (definitions in the module docstring).

    frames [N, 3, H, W] in [0, 1]; azimuths [N] degrees; elevation one value or [N]; ``judge`` a
    ``janus_lab.judge.Judge``; ``kind``: the prompted kind, for ``kind_accuracy``; ``lpips``: a
    ``tools.metrics.LPIPS`` module for a real ``a_lpips`` (the frames must be large enough for it)."""
    orbit = judge_orbit(frames, azimuths_deg, elevation_deg, judge, attribute_threshold)
    return metrics_of(orbit, frames, judge, min_segment_deg, min_gap_deg, kind, lpips)


def metrics_of(orbit: OrbitFrames, frames: Tensor, judge, min_segment_deg: float = MIN_SEGMENT_DEG,
               min_gap_deg: float = MIN_GAP_DEG, kind: Optional[str] = None,
               lpips: Optional[nn.Module] = None) -> Dict[str, float]:
    """``orbit_metrics`` from an already judged orbit."""
    if min_segment_deg < 0 or min_gap_deg < 0:
        raise ValueError("min_segment_deg and min_gap_deg must be >= 0")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    kept = [i for i in range(orbit.azimuth.shape[0]) if not bool(orbit.duplicate[i])]
    order, step, circular = orbit_order(orbit.azimuth[kept])
    order = [kept[i] for i in order]
    front = [int(orbit.judged_view[i]) == FRONT for i in order]
    face_back = [bool(orbit.front_only_visible[i] and orbit.in_back[i]) for i in order]
    front_runs = robust_runs(front, step, circular, min_segment_deg, min_gap_deg)
    outcome, face_runs, back_runs = face_outcome([bool(orbit.front_only_visible[i]) for i in order],
                                                 [float(orbit.azimuth[i]) for i in order], step, circular,
                                                 min_segment_deg, min_gap_deg)
    n = len(order)
    in_front = [i for i in order if int(orbit.camera_view[i]) == FRONT]
    ordered = frames[torch.tensor(order)]  # adjacent azimuths, a repeated end frame once
    metrics = {
        "janus": float(bool(back_runs) or len(front_runs) >= 2),
        "face_in_back": float(bool(back_runs)),
        "janus_two_fronts": float(len(front_runs) >= 2),
        "front_segments": float(len(front_runs)),
        "face_in_back_frames": float(sum(face_back)),
        "front_frames": float(sum(front)),
        "face_in_front": (sum(bool(orbit.front_only_visible[i]) for i in in_front) / len(in_front)
                          if in_front else math.nan),
        "face_scrambled": face_scrambled(frames, judge, counted=orbit.counted, azimuth=orbit.azimuth),
        "view_accuracy": sum(int(orbit.judged_view[i]) == int(orbit.camera_view[i]) for i in order) / n,
        "a_jfd": a_jfd(ordered, judge),
        "n_frames": float(n),
        "azimuth_step": step,
        "face_segments": float(len(face_runs)),
        "outcome": float(OUTCOMES.index(outcome)),  # its name: outcome_name(metrics)
        **{f"outcome_{name}": float(name == outcome) for name in OUTCOMES},
    }
    if kind is not None:
        metrics["kind_accuracy"] = sum(int(orbit.judged_kind[i]) == KINDS.index(kind) for i in order) / n
    if lpips is not None:
        metrics["a_lpips"] = a_lpips(ordered.to(next(lpips.parameters()).device), lpips)[0]
    return metrics


def face_scrambled(frames: Tensor, judge, seed: int = 0, attribute_threshold: float = ATTRIBUTE_THRESHOLD,
                   counted: Optional[Tensor] = None, azimuth: Optional[Tensor] = None) -> float:
    """Share of ``frames`` (those ``counted``, default all) judged to show a front-only attribute
    after ``scramble_object_pixels``; with the frames' ``azimuth``, read over the judge's orbit face
    window as ``judge_orbit`` reads the unscrambled frames."""
    scrambled = scramble_object_pixels(frames.float(), torch.Generator().manual_seed(seed))
    probs = judge(scrambled)["attribute_probs"].float().cpu()
    front_only = [ATTRIBUTES.index(a) for a in FRONT_ONLY]
    probs = probs[:, front_only]
    if azimuth is not None:
        probs = window_mean(probs, azimuth, getattr(judge, "orbit_face_window_deg", 0.0), counted)
    seen = (probs > attribute_threshold).any(dim=1)
    return float(seen[counted if counted is not None else slice(None)].float().mean())
