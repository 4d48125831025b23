"""The lab's world: procedural 3D creatures with a known front, and an analytic ray caster.

Coordinates and cameras follow threestudio (``data/uncond.py``): z is up, a camera at
elevation e, azimuth a and distance d sits at ``d * (cos e cos a, cos e sin a, sin e)`` and looks
at the origin, so azimuth 0 looks at the creature's front (its face points along +x). Pixel rays
use threestudio's pinhole model: focal ``0.5 * H / tan(fovy / 2)``, camera x right, y up, looking
down -z.

A creature is a body of one of three kinds (shape and colour), with

* a face (a large white disk with two black pupils) on its front, always there: the front is
  where the face is. It is large on purpose: score distillation reproduces a creature's
  silhouette and colours but not a feature a few pixels wide; a face covering most of the front
  hemisphere can appear in a 3D result (docs/model-history.md, the world);
* a tail (a pink ball) on its back, always there: the back is where the tail is;
* ``smiling``: a mouth under the eyes (front only);
* ``striped``: three bands across its back (back only);
* ``hat``: a red hat on top (seen from everywhere).

Face and tail are intrinsic (every creature of the data set has them; captions do not name them,
as a captioner does not say "a bear with eyes"); only the judge's training images also show
creatures without one of them (``Creature(face=False)``), so that it decides "face" from the face
itself and not from the pose, and (judge v9) partial faces (``face_scale`` / ``face_cut``). The face, mouth and stripes are decals on the body: a surface point belongs to a decal when its
direction from the body centre (azimuth, elevation in the body's frame) falls in the decal's
region. The renderer returns RGB and, per image, which parts are visible (pixel counts), so
captions and the judge's labels come from what the camera actually sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS: Tuple[str, ...] = ("bear", "robot", "frog")
# every visible-part label ("tail" appended last: the first four keep their indices)
ATTRIBUTES: Tuple[str, ...] = ("face", "smiling", "striped", "hat", "tail")
OPTIONAL_ATTRIBUTES: Tuple[str, ...] = ("smiling", "striped", "hat")  # what an object may lack
FRONT_ONLY: Tuple[str, ...] = ("face", "smiling")
BACK_ONLY: Tuple[str, ...] = ("striped",)
BACK_AND_SIDES: Tuple[str, ...] = ("tail",)  # seen from behind and from the sides, never from the front
EVERYWHERE: Tuple[str, ...] = ("hat",)

# Views in threestudio's direction order (prompt processors: side, front, back, overhead).
VIEWS: Tuple[str, ...] = ("side", "front", "back", "overhead")
FRONT_THRESHOLD = 45.0  # threestudio's default front_threshold (degrees of azimuth)
BACK_THRESHOLD = 45.0  # back region: |azimuth| > 180 - back_threshold
OVERHEAD_THRESHOLD = 60.0  # overhead region: elevation > overhead_threshold

BACKGROUND = (1.0, 1.0, 1.0)
IMAGE_SIZE = 32
SUPERSAMPLE = 2  # rays per pixel side; visibility is counted on the supersampled grid
MIN_VISIBLE_SUBPIXELS = 8  # a part is visible when it covers >= 2 output pixels

# Kind geometry: body ("ellipsoid" radii or "box" half-extents), body colour, extras.
BODY_COLOURS = {"bear": (0.55, 0.35, 0.20), "robot": (0.52, 0.58, 0.72), "frog": (0.33, 0.66, 0.28)}
BODY_SHAPES = {"bear": ("ellipsoid", (0.42, 0.42, 0.42)), "robot": ("box", (0.33, 0.33, 0.40)),
               "frog": ("ellipsoid", (0.40, 0.50, 0.29))}
FACE, PUPIL = (0.97, 0.97, 0.97), (0.05, 0.05, 0.05)
MOUTH, STRIPE, HAT = (0.30, 0.02, 0.05), (0.98, 0.88, 0.25), (0.85, 0.12, 0.12)
TAIL = (0.95, 0.45, 0.80)  # pink: a colour no other part has
PART_IDS = {"background": 0, "body": 1, "ears": 2, "hat": 3, "face": 4, "smiling": 5, "striped": 6, "tail": 7}
TAIL_RADIUS = 0.12  # the tail ball; its centre sits on the back of the body, a little below the middle
TAIL_ELEVATION = -15.0  # degrees, in the body's normalised frame
TAIL_OUT = 0.06  # how far the tail's centre lies behind the body's surface


@dataclass(frozen=True)
class Creature:
    kind: str
    smiling: bool = False
    striped: bool = False
    hat: bool = False
    face: bool = True  # intrinsic: False only in the judge's training images
    tail: bool = True
    # a partial face (judge v9's training images only): the front decals (face, pupils, mouth)
    # shrunk about the face's centre by ``face_scale`` (<= 1), and / or cut by the half-plane
    # ``face_cut`` = (direction, offset) in degrees of the body frame: the decal points with
    # az cos(direction) + el sin(direction) > offset (face centred at 0, 0) become body
    face_scale: float = 1.0
    face_cut: Optional[Tuple[float, float]] = None

    def has(self, attribute: str) -> bool:
        return bool(getattr(self, attribute))


@dataclass(frozen=True)
class Camera:
    elevation: float  # degrees
    azimuth: float  # degrees, 0 = the creature's front
    distance: float = 1.5
    fovy: float = 60.0  # degrees


# ----------------------------------------------------------------------------- views


def wrap_azimuth(azimuth: Tensor) -> Tensor:
    """Degrees to [-180, 180)."""
    return (azimuth + 180.0) % 360.0 - 180.0


def view_region(elevation: Tensor, azimuth: Tensor) -> Tensor:
    """Index into VIEWS with threestudio's default ranges; later regions win as in its prompt
    processor (side < front, back < overhead): overhead when elevation > 60, else front when
    |azimuth| < 45, back when |azimuth| > 135, else side."""
    elevation, azimuth = torch.as_tensor(elevation, dtype=torch.float32), torch.as_tensor(azimuth, dtype=torch.float32)
    azimuth = wrap_azimuth(azimuth)
    region = torch.zeros(azimuth.shape, dtype=torch.long)
    region[(azimuth > -FRONT_THRESHOLD) & (azimuth < FRONT_THRESHOLD)] = VIEWS.index("front")
    region[(azimuth > 180.0 - BACK_THRESHOLD) | (azimuth < -180.0 + BACK_THRESHOLD)] = VIEWS.index("back")
    region[elevation > OVERHEAD_THRESHOLD] = VIEWS.index("overhead")
    return region


def camera_position(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """threestudio's spherical camera position, [B, 3]."""
    e, a = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    return torch.stack([distance * torch.cos(e) * torch.cos(a), distance * torch.cos(e) * torch.sin(a),
                        distance * torch.sin(e)], dim=-1)


def camera_rays(elevation: Tensor, azimuth: Tensor, distance: Tensor, fovy: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """Ray origins [B, 3] and unit directions [B, size, size, 3] of cameras looking at the origin
    with +z up (threestudio's look-at frame and pinhole directions, pixel centres)."""
    position = camera_position(elevation, azimuth, distance)
    lookat = F.normalize(-position, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0]).expand_as(lookat)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    focal = 0.5 * size / torch.tan(0.5 * torch.deg2rad(fovy))  # [B]
    pixels = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    v, u = torch.meshgrid(pixels, pixels, indexing="ij")  # rows (down), columns (right)
    x = u[None] / focal[:, None, None]
    y = -v[None] / focal[:, None, None]
    directions = (x[..., None] * right[:, None, None] + y[..., None] * up[:, None, None]
                  + lookat[:, None, None])  # camera -z is the look-at direction
    return position, F.normalize(directions, dim=-1)


# ----------------------------------------------------------------------------- intersections


def _ellipsoid_hit(o: Tensor, d: Tensor, centre: Tensor, radii: Tensor) -> Tuple[Tensor, Tensor]:
    """Nearest positive hit distance (inf on a miss) and outward normal. o [B,1,3], d [B,R,3],
    centre / radii [B,1,3]."""
    oc = (o - centre) / radii
    dd = d / radii
    a = (dd * dd).sum(-1)
    b = (oc * dd).sum(-1)
    c = (oc * oc).sum(-1) - 1.0
    disc = b * b - a * c
    t = (-b - torch.sqrt(disc.clamp_min(0.0))) / a
    t = torch.where((disc > 0) & (t > 1e-4), t, torch.full_like(t, math.inf))
    p = o + t.nan_to_num(0.0, posinf=0.0)[..., None] * d
    normal = F.normalize((p - centre) / (radii * radii), dim=-1)
    return t, normal


def _box_hit(o: Tensor, d: Tensor, centre: Tensor, half: Tensor) -> Tuple[Tensor, Tensor]:
    """Slab-method ray/box intersection, outward normal of the face hit."""
    safe = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1 = (centre - half - o) / safe
    t2 = (centre + half - o) / safe
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    t = torch.where((t_near < t_far) & (t_near > 1e-4), t_near, torch.full_like(t_near, math.inf))
    p = o + t.nan_to_num(0.0, posinf=0.0)[..., None] * d
    q = (p - centre) / half
    axis = q.abs().argmax(-1, keepdim=True)
    normal = torch.zeros_like(q).scatter(-1, axis, torch.sign(q.gather(-1, axis)))
    return t, normal


def _cylinder_hit(o: Tensor, d: Tensor, centre: Tensor, radius: float, half_height: float) -> Tuple[Tensor, Tensor]:
    """Capped vertical cylinder (axis z through centre)."""
    oc = o - centre
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = oc[..., 0] * d[..., 0] + oc[..., 1] * d[..., 1]
    c = oc[..., 0] ** 2 + oc[..., 1] ** 2 - radius ** 2
    disc = b * b - a * c
    t_side = (-b - torch.sqrt(disc.clamp_min(0.0))) / a.clamp_min(1e-9)
    z_side = oc[..., 2] + t_side * d[..., 2]
    side_ok = (disc > 0) & (t_side > 1e-4) & (z_side.abs() <= half_height)
    t_side = torch.where(side_ok, t_side, torch.full_like(t_side, math.inf))
    dz = torch.where(d[..., 2].abs() < 1e-9, torch.full_like(d[..., 2], 1e-9), d[..., 2])
    t_cap = torch.full_like(t_side, math.inf)
    for plane in (half_height, -half_height):
        t_plane = (plane - oc[..., 2]) / dz
        xy = oc[..., :2] + t_plane[..., None] * d[..., :2]
        ok = (t_plane > 1e-4) & ((xy ** 2).sum(-1) <= radius ** 2)
        t_cap = torch.where(ok, torch.minimum(t_cap, t_plane), t_cap)
    t = torch.minimum(t_side, t_cap)
    p = oc + t.nan_to_num(0.0, posinf=0.0)[..., None] * d
    side_normal = F.normalize(torch.cat([p[..., :2], torch.zeros_like(p[..., :1])], -1), dim=-1)
    cap_normal = torch.zeros_like(p)
    cap_normal[..., 2] = torch.sign(p[..., 2])
    normal = torch.where((t_side <= t_cap)[..., None], side_normal, cap_normal)
    return t, normal


# ----------------------------------------------------------------------------- creatures


def _body_top(kind: str) -> float:
    return BODY_SHAPES[kind][1][2]


def _decal_angles(p: Tensor, centre: Tensor, scale: Tensor) -> Tuple[Tensor, Tensor]:
    """Azimuth and elevation (degrees) of a body point seen from the body centre, in the body's
    normalised frame (so decals sit at the same place on every body shape)."""
    q = (p - centre) / scale
    azimuth = torch.rad2deg(torch.atan2(q[..., 1], q[..., 0]))
    elevation = torch.rad2deg(torch.atan2(q[..., 2], q[..., :2].norm(dim=-1)))
    return azimuth, elevation


def _angular_distance(az: Tensor, el: Tensor, az0: float, el0: float) -> Tensor:
    a, e = torch.deg2rad(az), torch.deg2rad(el)
    a0, e0 = math.radians(az0), math.radians(el0)
    cos = torch.sin(e) * math.sin(e0) + torch.cos(e) * math.cos(e0) * torch.cos(a - a0)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


# The face: a white disk around the front (FACE_RADIUS degrees of the body's normalised frame)
# with two black pupils; about 10 output pixels wide, its pupils about 3, at the default camera.
# The mouth is a thick dark arc on the lower half of the disk.
FACE_ELEVATION, FACE_RADIUS = 0.0, 40.0
PUPIL_AZIMUTH, PUPIL_ELEVATION, PUPIL_RADIUS = 17.0, 14.0, 9.0
MOUTH_HALF_WIDTH, MOUTH_HALF_THICKNESS = 30.0, 5.5  # degrees


def partial_front(azimuth: Tensor, elevation: Tensor, creatures: Sequence[Creature]):
    """The front decals' coordinates and where they are kept, for partial faces
    (``Creature.face_scale`` / ``face_cut``): (azimuth, elevation, kept [B, R] bool), or None
    when every creature's face is whole (its renders then stay exactly as before)."""
    if all(c.face_scale == 1.0 and c.face_cut is None for c in creatures):
        return None
    scale = torch.tensor([float(c.face_scale) for c in creatures])[:, None]
    cut = torch.tensor([c.face_cut if c.face_cut is not None else (0.0, math.inf) for c in creatures])
    direction = torch.deg2rad(cut[:, :1])
    kept = azimuth * torch.cos(direction) + elevation * torch.sin(direction) <= cut[:, 1:]
    # a shrunk decal lies inside the whole face's disk (no wrap-around onto the back)
    kept = kept & (_angular_distance(azimuth, elevation, 0.0, FACE_ELEVATION) < FACE_RADIUS)
    return azimuth / scale, elevation / scale, kept


def decal_parts(azimuth: Tensor, elevation: Tensor, creatures: Sequence[Creature]) -> Tuple[Tensor, Tensor]:
    """Part id of each body point (face, smiling or striped decal; else body) and whether a
    face point is a pupil. azimuth / elevation [B, R] in the body frame."""
    part = torch.full(azimuth.shape, PART_IDS["body"], dtype=torch.long)
    partial = partial_front(azimuth, elevation, creatures)
    fa, fe = (azimuth, elevation) if partial is None else partial[:2]  # the front decals' frame
    has_face = torch.tensor([c.face for c in creatures])[:, None]
    face = (_angular_distance(fa, fe, 0.0, FACE_ELEVATION) < FACE_RADIUS) & has_face
    pupil_distance = torch.minimum(_angular_distance(fa, fe, PUPIL_AZIMUTH, PUPIL_ELEVATION),
                                   _angular_distance(fa, fe, -PUPIL_AZIMUTH, PUPIL_ELEVATION))
    smiling = torch.tensor([c.smiling for c in creatures])[:, None]
    striped = torch.tensor([c.striped for c in creatures])[:, None]
    # the mouth: a smile arc under the eyes, lowest in the middle
    arc = -22.0 + 0.010 * fa ** 2
    mouth = (fa.abs() < MOUTH_HALF_WIDTH) & ((fe - arc).abs() < MOUTH_HALF_THICKNESS) & smiling
    if partial is not None:
        face, mouth = face & partial[2], mouth & partial[2]
    # three bands across the back
    back = azimuth.abs() > 140.0
    bands = ((elevation + 24.0).abs() < 5.0) | (elevation.abs() < 5.0) | ((elevation - 24.0).abs() < 5.0)
    part[face] = PART_IDS["face"]
    part[back & bands & striped] = PART_IDS["striped"]
    part[mouth] = PART_IDS["smiling"]
    return part, face & (pupil_distance < PUPIL_RADIUS)


def _primitives(creatures: Sequence[Creature]):
    """Per creature, the tensors of its primitives (batched; absent ones get zero size)."""
    B = len(creatures)
    body_centre = torch.zeros(B, 1, 3)
    body_size = torch.tensor([BODY_SHAPES[c.kind][1] for c in creatures])[:, None]
    is_box = torch.tensor([BODY_SHAPES[c.kind][0] == "box" for c in creatures])
    top = torch.tensor([_body_top(c.kind) for c in creatures])
    has_hat = torch.tensor([c.hat for c in creatures])
    has_ears = torch.tensor([c.kind == "bear" for c in creatures])
    return body_centre, body_size, is_box, top, has_hat, has_ears


def tail_centre(kind: str) -> Tuple[float, float, float]:
    """The tail ball's centre: TAIL_OUT behind the body's surface straight behind it (-x),
    TAIL_ELEVATION below the middle in the body's normalised frame (most of the ball sticks out,
    so the side views see it on the silhouette)."""
    shape, size = BODY_SHAPES[kind]
    e = math.radians(TAIL_ELEVATION)
    if shape == "box":  # the back face
        return (-size[0] - TAIL_OUT, 0.0, size[2] * math.tan(e))
    return (-size[0] * math.cos(e) - TAIL_OUT, 0.0, size[2] * math.sin(e))


def ray_cast(origin: Tensor, directions: Tensor, creatures: Sequence[Creature]) -> Dict[str, Tensor]:
    """First hit of each ray: distance t [B,R], normal [B,R,3], part id [B,R] and pupil mask."""
    B, R = directions.shape[0], directions.shape[1]
    o = origin[:, None, :]
    d = directions
    body_centre, body_size, is_box, top, has_hat, has_ears = _primitives(creatures)
    t_ell, n_ell = _ellipsoid_hit(o, d, body_centre, body_size)
    t_box, n_box = _box_hit(o, d, body_centre, body_size)
    t_body = torch.where(is_box[:, None], t_box, t_ell)
    n_body = torch.where(is_box[:, None, None], n_box, n_ell)
    candidates = [(t_body, n_body, PART_IDS["body"])]
    for side in (-1.0, 1.0):  # bear ears
        centre = torch.stack([torch.zeros(B), torch.full((B,), 0.27 * side), top - 0.08], -1)[:, None]
        t, n = _ellipsoid_hit(o, d, centre, torch.full((B, 1, 3), 0.12))
        candidates.append((torch.where(has_ears[:, None], t, torch.full_like(t, math.inf)), n, PART_IDS["ears"]))
    for radius, z0, half in ((0.27, 0.015, 0.015), (0.16, 0.13, 0.115)):  # hat brim and crown
        centre = torch.stack([torch.zeros(B), torch.zeros(B), top - 0.03 + z0], -1)[:, None]
        t, n = _cylinder_hit(o, d, centre, radius, half)
        candidates.append((torch.where(has_hat[:, None], t, torch.full_like(t, math.inf)), n, PART_IDS["hat"]))
    tail = torch.tensor([tail_centre(c.kind) for c in creatures])[:, None]
    t, n = _ellipsoid_hit(o, d, tail, torch.full((B, 1, 3), TAIL_RADIUS))
    has_tail = torch.tensor([c.tail for c in creatures])
    candidates.append((torch.where(has_tail[:, None], t, torch.full_like(t, math.inf)), n, PART_IDS["tail"]))
    ts = torch.stack([c[0] for c in candidates], 0)
    best = ts.argmin(0)  # [B, R]
    t = ts.gather(0, best[None])[0]
    normals = torch.stack([c[1] for c in candidates], 0)
    normal = normals.gather(0, best[None, ..., None].expand(1, B, R, 3))[0]
    part_of = torch.tensor([c[2] for c in candidates])
    part = torch.where(torch.isfinite(t), part_of[best], torch.zeros_like(best))
    p = o + t.nan_to_num(0.0, posinf=0.0)[..., None] * d
    azimuth, elevation = _decal_angles(p, body_centre, body_size)
    decal, pupil = decal_parts(azimuth, elevation, creatures)
    on_body = part == PART_IDS["body"]
    part = torch.where(on_body, decal, part)
    return {"t": t, "normal": normal, "part": part, "pupil": pupil & (part == PART_IDS["face"])}


def shade(hit: Dict[str, Tensor], creatures: Sequence[Creature], directions: Tensor,
          light: Tensor, background: Tensor) -> Tensor:
    """Lambertian shading with ambient light: RGB [B, R, 3]."""
    B, R = hit["part"].shape
    body = torch.tensor([BODY_COLOURS[c.kind] for c in creatures])[:, None].expand(B, R, 3)
    colour = body.clone()
    for part, rgb in (("face", FACE), ("smiling", MOUTH), ("striped", STRIPE), ("hat", HAT), ("tail", TAIL)):
        colour[hit["part"] == PART_IDS[part]] = torch.tensor(rgb)
    colour[hit["pupil"]] = torch.tensor(PUPIL)
    lambert = (hit["normal"] * light[:, None, :]).sum(-1).clamp_min(0.0)
    lit = colour * (0.45 + 0.6 * lambert)[..., None]
    miss = (hit["part"] == 0)[..., None]
    return torch.where(miss, background[:, None, :].expand(B, R, 3), lit.clamp(0.0, 1.0))


def light_directions(elevation: Tensor, azimuth: Tensor, jitter_deg: Tensor) -> Tensor:
    """A light near the camera, raised by 30 degrees and turned by ``jitter_deg``."""
    e = torch.deg2rad((elevation + 30.0).clamp(max=89.0))
    a = torch.deg2rad(azimuth + jitter_deg)
    return torch.stack([torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], -1)


def render(creatures: Sequence[Creature], elevation, azimuth, distance=1.5, fovy=60.0,
           size: int = IMAGE_SIZE, supersample: int = SUPERSAMPLE, light_jitter=0.0,
           background=BACKGROUND) -> Dict[str, Tensor]:
    """Render creatures (one per camera) as RGB [B, 3, size, size] in [0, 1].

    Returns ``image``, ``silhouette`` [B, 1, size, size] (the share of each pixel the creature
    covers), ``visible`` [B, len(ATTRIBUTES)] (bool: the part covers at least
    MIN_VISIBLE_SUBPIXELS supersampled pixels), ``pixels`` (the counts, in output pixels),
    ``view`` [B] (index into VIEWS), and the cameras' ``elevation``/``azimuth``."""
    B = len(creatures)

    def batch(x):
        x = torch.as_tensor(x, dtype=torch.float32)
        return x.expand(B).clone() if x.dim() == 0 else x.float()

    elevation, azimuth, distance, fovy = map(batch, (elevation, azimuth, distance, fovy))
    light_jitter = batch(light_jitter)
    background = torch.as_tensor(background, dtype=torch.float32)
    background = background.expand(B, 3) if background.dim() == 1 else background
    fine = size * supersample
    origin, directions = camera_rays(elevation, azimuth, distance, fovy, fine)
    directions = directions.reshape(B, fine * fine, 3)
    hit = ray_cast(origin, directions, creatures)
    rgb = shade(hit, creatures, directions, light_directions(elevation, azimuth, light_jitter), background)
    image = rgb.reshape(B, fine, fine, 3).permute(0, 3, 1, 2)
    image = F.avg_pool2d(image, supersample) if supersample > 1 else image
    counts = torch.stack([(hit["part"] == PART_IDS[a]).sum(-1) for a in ATTRIBUTES], -1)
    covered = (hit["part"] != PART_IDS["background"]).float().reshape(B, 1, fine, fine)
    silhouette = F.avg_pool2d(covered, supersample) if supersample > 1 else covered
    return {"image": image.clamp(0.0, 1.0), "silhouette": silhouette, "visible": counts >= MIN_VISIBLE_SUBPIXELS,
            "pixels": counts.float() / supersample ** 2, "view": view_region(elevation, azimuth),
            "elevation": elevation, "azimuth": azimuth}


def render_batched(creatures: Sequence[Creature], elevation: Tensor, azimuth: Tensor, distance: Tensor,
                   fovy: Tensor, chunk: int = 256, **kwargs) -> Dict[str, Tensor]:
    """``render`` in chunks (bounded memory); the same result as one call."""
    parts: List[Dict[str, Tensor]] = []
    for i in range(0, len(creatures), chunk):
        sl = slice(i, i + chunk)
        extra = {k: (v[sl] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in kwargs.items()}
        parts.append(render(creatures[i:i + chunk], elevation[sl], azimuth[sl], distance[sl], fovy[sl], **extra))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
