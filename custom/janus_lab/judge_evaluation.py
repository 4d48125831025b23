"""What a trained judge gets right, on held-out renders: view, kind, attribute and camera
accuracy; the face_scrambled control (a transform it never trained on); faces and their absence
at a 3D orbit's low resolution. ``held_out_figures`` gathers what judge.json records."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from antijanus.utils.imaging import at_resolution
from .images import scramble_object_pixels
from .judge import JudgeNet
from .judge_data import augment
from .judge_settings import JudgeSettings
from .world import ATTRIBUTES, VIEWS, view_region, wrap_azimuth


def camera_angles(camera: Tensor) -> Tuple[Tensor, Tensor]:
    """The camera head's (cos az, sin az, el / 90) -> azimuth, elevation in degrees."""
    return torch.rad2deg(torch.atan2(camera[:, 1], camera[:, 0])), camera[:, 2] * 90.0


@torch.no_grad()
def accuracy(net: JudgeNet, data: Dict[str, Tensor], images: Optional[Tensor] = None, batch: int = 500) -> Dict[str, float]:
    """View, kind and per-attribute accuracy on labelled data (images in [0, 1] or uint8)."""
    net.eval()
    images = data["image"] if images is None else images
    preds = {"view": [], "kind": [], "attributes": [], "camera": []}
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        out = net(x)
        preds["view"].append(out["view"].argmax(-1))
        preds["kind"].append(out["kind"].argmax(-1))
        preds["attributes"].append(out["attributes"] > 0)
        preds["camera"].append(out["camera"])
    view, kind, attrs, camera = (torch.cat(preds[k]) for k in ("view", "kind", "attributes", "camera"))
    result = {"view": float((view == data["view"]).float().mean()), "kind": float((kind == data["kind"]).float().mean())}
    # the camera head: its azimuth / elevation errors, and the region they fall in
    azimuth, elevation = camera_angles(camera)
    result["azimuth_error_median_deg"] = float(wrap_azimuth(azimuth - data["azimuth"]).abs().median())
    result["elevation_error_median_deg"] = float((elevation - data["elevation"]).abs().median())
    result["view_from_camera_head"] = float((view_region(elevation, azimuth) == data["view"]).float().mean())
    for j, a in enumerate(ATTRIBUTES):
        result[f"attribute_{a}"] = float((attrs[:, j] == (data["attributes"][:, j] > 0.5)).float().mean())
    # view accuracy away from the region borders (|azimuth - border| > 5 deg, |elevation - 60| > 5)
    az = data["azimuth"].abs()
    far = ((az - 45).abs() > 5) & ((az - 135).abs() > 5) & ((data["elevation"] - 60).abs() > 5)
    result["view_away_from_borders"] = float((view[far] == data["view"][far]).float().mean())
    return result


@torch.no_grad()
def held_out_scrambled(net: JudgeNet, data: Dict[str, Tensor], seed: int = 0) -> Dict[str, float]:
    """The face_scrambled control (``images.scramble_object_pixels``, a pixel shuffle: a
    transform the judge does not train on unless ``scramble_patches`` holds 1) on held-out
    renders whose face is visible: the share still judged to show a face (the face-visible rate
    on the same renders unscrambled beside it)."""
    net.eval()
    face = ATTRIBUTES.index("face")
    shown = data["attributes"][:, face] > 0.5
    images = data["image"][shown].float() / 255.0
    scrambled = scramble_object_pixels(images, torch.Generator().manual_seed(seed))
    seen = torch.sigmoid(net(scrambled)["attributes"][:, face]) > 0.5
    seen_clean = torch.sigmoid(net(images)["attributes"][:, face]) > 0.5
    return {"face_seen": float(seen.float().mean()), "face_seen_unscrambled": float(seen_clean.float().mean()),
            "images": int(shown.sum())}


LOWRES_SIDES = (12, 16)  # the held-out low-resolution measurement (16: a 3D orbit's latent size)


@torch.no_grad()
def held_out_lowres(net: JudgeNet, with_face: Dict[str, Tensor], faceless: Dict[str, Tensor],
                    sides=LOWRES_SIDES) -> Dict[str, Dict[str, float]]:
    """Per side: held-out renders at that resolution (``at_resolution``): the view accuracy and
    the share of visible faces seen (``face_recall``) on the world's creatures, and the share
    judged "no face" on creatures without one (``faceless_no_face``); ``_front``: the same on the
    front-region views alone (where the Janus metric's ``face_in_front`` looks)."""
    net.eval()
    face = ATTRIBUTES.index("face")
    result = {}
    for side in sides:
        row = {}
        for name, data in (("with_face", with_face), ("faceless", faceless)):
            images = at_resolution(data["image"].float() / 255.0, side)
            out = net(images)
            seen = out["attributes"][:, face] > 0
            front = data["view"] == VIEWS.index("front")
            if name == "with_face":
                shown = data["attributes"][:, face] > 0.5
                row["view"] = float((out["view"].argmax(-1) == data["view"]).float().mean())
                row["face_recall"] = float(seen[shown].float().mean())
                row["face_recall_front"] = float(seen[shown & front].float().mean())
            else:
                row["faceless_no_face"] = float((~seen).float().mean())
                row["faceless_no_face_front"] = float((~seen[front]).float().mean())
        result[str(side)] = row
    return result


def held_out_figures(net: JudgeNet, test: Dict[str, Tensor], faceless: Dict[str, Tensor],
                     settings: JudgeSettings) -> Dict[str, object]:
    """What judge.json records of a trained judge: accuracy on the held-out renders ``test``
    (clean, and augmented with seed ``settings.seed + 2``), on ``faceless`` creatures, the
    face_scrambled control and the low-resolution figures."""
    net.eval()
    clean = accuracy(net, test)
    g_test = torch.Generator().manual_seed(settings.seed + 2)
    augmented = accuracy(net, test, augment(test["image"].float() / 255.0,
                                            dataclasses.replace(settings, p_augment=1.0), g_test))
    without_face = accuracy(net, faceless)
    scrambled = held_out_scrambled(net, test)
    lowres = held_out_lowres(net, test, faceless)
    return {"held_out": clean, "held_out_augmented": augmented,
            "held_out_faceless": {"view": without_face["view"], "attribute_face": without_face["attribute_face"]},
            "held_out_scrambled": {**scrambled, "transform_trained_on": 1 in settings.scramble_patches},
            "held_out_lowres": lowres}
