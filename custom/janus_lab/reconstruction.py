"""The reconstruction control: known creatures through the fast path's own representation.

The judge is reliable on the world's renders; a 3D run's orbit is something else (a coarse volume,
16x16 latents decoded by the prior's VAE, the test camera's framing). Here the fast path's volume is
fitted, without any guidance, to the world's renders of a creature whose answer is known, and its
orbit is rendered and judged exactly as a run's (``volume_orbits.judge_run_orbit``):

* ``face``: the world's creature (one face, in front): not Janus, the face seen in front;
* ``faceless``: the same without its face: no face in front;
* ``two_faced``: its front decals mirrored onto its back (``orbits.render_creature_orbit(two_faced=True)``):
  Janus.

The fit: the volume's latents (and its background) by Adam on the L2 distance between its renders
and the VAE latents (posterior means) of world renders from random cameras of the setting's
distance / fovy ranges (uniform azimuth, the cameras' elevation range, looking at the centre), the
run settings' steps and learning rate. A setting (camera preset, volume, judge) passes when the
pre-registered rule holds (``passes``; custom/janus_lab/docs/preregistration.md, second entry).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from antijanus.utils.errors import ConfigError

from .fast3d import CameraSettings, Cameras, Material, Scene, look_at_rays, make_scene, render, render_orbit, spherical
from .images import object_mask
from .orbits import orbit_azimuths, render_mirrored_decals
from .volume_orbits import frames_from_uint8, frames_to_uint8, judge_run_orbit
from .world import KINDS, Creature, render as render_world

FORMS = ("face", "faceless", "two_faced")
# the pre-registered rule (custom/janus_lab/docs/preregistration.md, second entry)
MIN_FACE_IN_FRONT = 0.8  # with the face: mean face_in_front at least this
MAX_JANUS_WITH_FACE = 1  # ... and at most this many kinds Janus
MAX_FACE_IN_FRONT_FACELESS = 0.2  # faceless: mean face_in_front at most this
MIN_JANUS_TWO_FACED = 2  # two-faced: at least this many kinds Janus


@dataclass(frozen=True)
class ReconstructionSettings:
    views: int = 48  # world renders the volume is fitted to
    batch: int = 4  # views per step
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("views", "batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, value, "an integer >= 1")


def world_views(kind: str, form: str, cameras: CameraSettings, n: int, generator: torch.Generator
                ) -> Dict[str, Tensor]:
    """``n`` world renders [n, 3, 32, 32] of one creature in one form, from random centred cameras
    (uniform azimuth, elevation / distance / fovy uniform in the cameras' ranges)."""
    if form not in FORMS:
        raise ConfigError("form", form, "a reconstruction form", list(FORMS))

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    azimuth = uniform(-180.0, 180.0)
    elevation = uniform(*cameras.elevation_range)
    distance = uniform(*cameras.camera_distance_range)
    fovy = uniform(*cameras.fovy_range)
    creature = Creature(kind, face=form != "faceless")
    if form == "two_faced":
        images = torch.cat([render_mirrored_decals([creature], azimuth[i:i + 1], float(elevation[i]),
                                                    float(distance[i]), float(fovy[i]), 32) for i in range(n)])
    else:
        images = render_world([creature] * n, elevation, azimuth, distance, fovy)["image"]
    return {"image": images, "azimuth": azimuth, "elevation": elevation, "distance": distance, "fovy": fovy}


def centred_cameras(elevation: Tensor, azimuth: Tensor, distance: Tensor, fovy: Tensor, size: int) -> Cameras:
    """Cameras looking at the origin, z up (the world's), ``size`` x ``size`` rays."""
    position = spherical(elevation, azimuth, distance)
    B = position.shape[0]
    up = torch.tensor([0.0, 0.0, 1.0]).expand(B, 3)
    rays_o, rays_d = look_at_rays(position, torch.zeros(B, 3), up, fovy, size, size)
    return Cameras(rays_o, rays_d, position, position, elevation, azimuth, distance)


def fit_volume(views: Dict[str, Tensor], encode, volume_settings, steps: int, lr: float, background_lr: float,
               size: int, settings: ReconstructionSettings = ReconstructionSettings(),
               betas: Tuple[float, float] = (0.9, 0.99), eps: float = 1e-15) -> Scene:
    """The fast path's latent volume fitted to ``views`` (``world_views``): L2 between its renders
    at the views' cameras and ``encode(images)`` (the views' latents [n, C, size, size]); Adam with
    the runs' ``betas`` and ``eps`` (the config's optimizer)."""
    if volume_settings.features != "latent":
        raise ConfigError("volume.features", volume_settings.features, "the reconstruction control fits latent volumes",
                          ["latent"])
    torch.manual_seed(settings.seed)
    with torch.no_grad():
        targets = encode(views["image"]).permute(0, 2, 3, 1)  # [n, size, size, C]
    if targets.shape[1:3] != (size, size):
        raise ValueError(f"the latents are {tuple(targets.shape[1:3])}, the renders {size}x{size}")
    cameras = centred_cameras(views["elevation"], views["azimuth"], views["distance"], views["fovy"], size)
    scene = make_scene(volume_settings, settings.seed)
    optimizer = torch.optim.Adam([{"params": scene.volume.parameters(), "lr": lr},
                                  {"params": scene.background.parameters(), "lr": background_lr}],
                                 betas=tuple(betas), eps=eps)
    g = torch.Generator().manual_seed(settings.seed)
    stratify = torch.Generator().manual_seed(settings.seed + 1)
    n = targets.shape[0]
    material = Material()
    for _ in range(steps):
        pick = torch.randperm(n, generator=g)[:settings.batch]
        part = Cameras(*(getattr(cameras, f.name)[pick] for f in dataclasses.fields(Cameras)))
        out = render(scene.volume, scene.background, part, material, "albedo", stratify, with_normal=False)
        loss = F.mse_loss(out["comp_rgb"], targets[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return scene


def passes(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The pre-registered rule over the rows of one setting (one per kind and form, with the
    orbit's ``janus`` and ``face_in_front``): per form its verdict, and ``passed`` (all three)."""
    by_form = {form: [r for r in rows if r["form"] == form] for form in FORMS}
    if any(not cell for cell in by_form.values()):
        raise ValueError("the rule needs every form")

    def mean(cell, key):
        values = [r[key] for r in cell if not math.isnan(r[key])]
        return sum(values) / len(values) if values else math.nan

    def janus_count(cell):
        return sum(int(r["janus"] >= 0.5) for r in cell)

    face, faceless, two = by_form["face"], by_form["faceless"], by_form["two_faced"]
    verdict = {
        "face": mean(face, "face_in_front") >= MIN_FACE_IN_FRONT and janus_count(face) <= MAX_JANUS_WITH_FACE,
        "faceless": mean(faceless, "face_in_front") <= MAX_FACE_IN_FRONT_FACELESS,
        "two_faced": janus_count(two) >= MIN_JANUS_TWO_FACED,
    }
    summary = {"face_in_front_face": mean(face, "face_in_front"), "janus_face": janus_count(face),
               "face_in_front_faceless": mean(faceless, "face_in_front"), "janus_two_faced": janus_count(two)}
    return {**summary, **{f"passed_{k}": v for k, v in verdict.items()}, "passed": all(verdict.values())}


def fit_orbits(backbone, settings, representation, kinds: Sequence[str] = KINDS,
               control: ReconstructionSettings = ReconstructionSettings(), log=print) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """Every kind in every form fitted and its orbit rendered as a run's (``settings``: the run's
    ``FastSettings``; ``representation``: its ``Representation``): per (kind, form) the orbit's
    ``frames`` as a run keeps them (uint8, ``volume_orbits.frames_to_uint8``) and its ``coverage``."""
    encode = latent_means(backbone)
    orbits = {}
    size = representation.cameras.height
    for kind in kinds:
        for form in FORMS:
            scene, _ = fit_creature(kind, form, encode, settings, representation, control)
            orbit, opacity = render_orbit(scene, orbit_azimuths(settings.orbit_views), settings.orbit_elevation,
                                          representation.orbit_distance, representation.orbit_fovy,
                                          representation.material, settings.steps, resolution=size,
                                          decode=backbone.decode_latents)
            coverage = float((opacity > 0.5).float().mean())
            orbits[(kind, form)] = {"frames": frames_to_uint8(orbit), "coverage": coverage}
            log(f"reconstruction {kind} {form}: fitted, coverage {coverage:.3f}")
    return orbits


def fit_creature(kind: str, form: str, encode, settings, representation, control: ReconstructionSettings
                 ) -> Tuple[Scene, Dict[str, Tensor]]:
    """One creature in one form fitted as ``fit_orbits`` fits it (the same views and seed): the
    scene and its training views."""
    g = torch.Generator().manual_seed(control.seed * 1000 + KINDS.index(kind) * 10 + FORMS.index(form))
    views = world_views(kind, form, representation.cameras, control.views, g)
    background_lr = representation.system.background_lr or representation.system.lr
    scene = fit_volume(views, encode, representation.volume, settings.steps, settings.lr, background_lr,
                       representation.cameras.height, control, betas=representation.system.betas,
                       eps=representation.system.eps)
    return scene, views


@torch.no_grad()
def fit_residual(scene: Scene, views: Dict[str, Tensor], encode, decode, size: int, n: int = 12) -> Dict[str, float]:
    """How a fitted latent volume holds its first ``n`` training views: ``latent_residual``, the
    squared error of its renders at their cameras relative to the latents' mean square; and on the
    creature's pixels (``images.object_mask``: those unlike the plain ground), the mean absolute
    error per channel of those renders decoded (``decoded_error``) beside the VAE's own round trip
    of the views (``round_trip_error``). A latent space that decodes resampled latents in false colours shows a
    small residual and a large decoded error."""
    images = views["image"][:n]
    cameras = centred_cameras(views["elevation"][:n], views["azimuth"][:n], views["distance"][:n], views["fovy"][:n],
                              size)
    rendered = render(scene.volume, scene.background, cameras, Material(), "albedo", None,
                      with_normal=False)["comp_rgb"].permute(0, 3, 1, 2)
    target = encode(images)
    creature = object_mask(images).expand_as(images)
    return {"latent_residual": float((rendered - target).pow(2).mean() / target.pow(2).mean()),
            "decoded_error": float((decode(rendered).float() - images).abs()[creature].mean()),
            "round_trip_error": float((decode(target).float() - images).abs()[creature].mean())}


def judge_orbits(orbits: Dict[Tuple[str, str], Dict[str, Any]], judge, settings) -> Dict[str, Any]:
    """``fit_orbits``' orbits judged exactly as runs' (``volume_orbits.judge_run_orbit``): one row per
    kind and form, and the rule's verdict (``passes``)."""
    rows = [{"kind": kind, "form": form, **judge_run_orbit(frames_from_uint8(orbit["frames"]), judge, f"a {kind}", settings),
             "coverage": orbit["coverage"]} for (kind, form), orbit in orbits.items()]
    return {"rows": rows, "verdict": passes(rows)}


def latent_means(backbone):
    """Images [B, 3, H, W] in [0, 1] -> the VAE posterior means, scaled as the guidance's latents."""
    def encode(images: Tensor) -> Tensor:
        vae = backbone.vae
        posterior = vae.encode((images * 2.0 - 1.0).to(next(vae.parameters()).dtype)).latent_dist
        return (posterior.mean * backbone.scaling_factor).float()

    return encode
