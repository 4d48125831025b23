"""Orbits: the azimuths of an orbit, and orbits of the world's creatures rendered by its ray caster
(the ground-truth creature, or a two-faced one: its front decals mirrored onto its back), for
the Janus metric's tests, the reconstruction control and illustrations."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .world import (BACKGROUND, BODY_SHAPES, IMAGE_SIZE, PART_IDS, SUPERSAMPLE, Creature, _box_hit, _ellipsoid_hit,
                    camera_rays, decal_parts, light_directions, ray_cast, render, shade)


def orbit_azimuths(n: int = 36, duplicate_end: bool = False) -> Tensor:
    """n uniformly spaced azimuths from 0; ``duplicate_end``: threestudio's linspace(0, 360, n)."""
    return torch.linspace(0.0, 360.0, n) if duplicate_end else torch.arange(n, dtype=torch.float32) * (360.0 / n)


def render_creature_orbit(creature: Creature, azimuths: Tensor, elevation: float = 15.0, distance: float = 1.5,
                 fovy: float = 60.0, size: int = IMAGE_SIZE, two_faced: bool = False) -> Tensor:
    """Frames [N, 3, size, size] of one creature seen from each azimuth (light near the camera).
    ``two_faced``: the creature with its front decals (face, smile) mirrored onto its back, i.e.
    two fronts stitched at the x = 0 plane (its stripes are covered)."""
    azimuths = torch.as_tensor(azimuths, dtype=torch.float32)
    creatures = [creature] * azimuths.shape[0]
    if not two_faced:
        return render(creatures, elevation, azimuths, distance, fovy, size=size)["image"]
    return render_mirrored_decals(creatures, azimuths, elevation, distance, fovy, size)


def render_mirrored_decals(creatures: Sequence[Creature], azimuth: Tensor, elevation: float, distance: float,
                            fovy: float, size: int, supersample: int = SUPERSAMPLE) -> Tensor:
    """``world.render`` with the body's decals evaluated at (|x|, y, z): the front half mirrored
    onto the back half. Back-only primitives (the world's tail, where it has one) are left out:
    a ray that hits one goes on to the body behind it."""
    B = len(creatures)
    elevation_t, distance_t, fovy_t = (torch.full((B,), float(v)) for v in (elevation, distance, fovy))
    fine = size * supersample
    origin, directions = camera_rays(elevation_t, azimuth, distance_t, fovy_t, fine)
    directions = directions.reshape(B, fine * fine, 3)
    hit = dict(ray_cast(origin, directions, creatures))
    if "tail" in PART_IDS:
        on_tail = hit["part"] == PART_IDS["tail"]
        t_body, n_body = _body_hit(origin, directions, creatures)
        hit["t"] = torch.where(on_tail, t_body, hit["t"])
        hit["normal"] = torch.where(on_tail[..., None], n_body, hit["normal"])
        body_or_miss = torch.where(torch.isfinite(t_body), PART_IDS["body"], PART_IDS["background"])
        hit["part"] = torch.where(on_tail, body_or_miss, hit["part"])
    scale = torch.tensor([BODY_SHAPES[c.kind][1] for c in creatures])[:, None]  # body centre at 0
    q = (origin[:, None, :] + hit["t"].nan_to_num(0.0, posinf=0.0)[..., None] * directions) / scale
    az = torch.rad2deg(torch.atan2(q[..., 1], q[..., 0].abs()))
    el = torch.rad2deg(torch.atan2(q[..., 2], q[..., :2].norm(dim=-1)))
    decal, pupil = decal_parts(az, el, creatures)
    on_body = torch.zeros_like(hit["part"], dtype=torch.bool)
    for part in ("body", "face", "smiling", "striped"):
        on_body |= hit["part"] == PART_IDS[part]
    part = torch.where(on_body, decal, hit["part"])
    hit.update(part=part, pupil=pupil & (part == PART_IDS["face"]))
    light = light_directions(elevation_t, azimuth, torch.zeros(B))
    rgb = shade(hit, creatures, directions, light, torch.tensor(BACKGROUND).expand(B, 3))
    image = rgb.reshape(B, fine, fine, 3).permute(0, 3, 1, 2)
    return F.avg_pool2d(image, supersample).clamp(0.0, 1.0) if supersample > 1 else image.clamp(0.0, 1.0)


def _body_hit(origin: Tensor, directions: Tensor, creatures: Sequence[Creature]) -> Tuple[Tensor, Tensor]:
    """Hit distance and normal of the bodies alone (ellipsoid or box at the origin)."""
    B = len(creatures)
    o, centre = origin[:, None, :], torch.zeros(B, 1, 3)
    size = torch.tensor([BODY_SHAPES[c.kind][1] for c in creatures])[:, None]
    is_box = torch.tensor([BODY_SHAPES[c.kind][0] == "box" for c in creatures])
    t_ell, n_ell = _ellipsoid_hit(o, directions, centre, size)
    t_box, n_box = _box_hit(o, directions, centre, size)
    return torch.where(is_box[:, None], t_box, t_ell), torch.where(is_box[:, None, None], n_box, n_ell)
