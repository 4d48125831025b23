"""The judge's training images: rendered creatures with their ground truth, the augmentations
that make them resemble NeRF / score-distillation renders, and the scrambled negatives (the
creature's structure destroyed, its colours kept). Everything is drawn from the given seed or
generator (``JudgeSettings``)."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from antijanus.utils import imaging
from .images import gaussian_blur, object_mask, patch_shuffle
from .judge_settings import JudgeSettings
from .world import ATTRIBUTES, FACE_RADIUS, KINDS, Creature, render_batched


def render_labelled(settings: JudgeSettings, n: int, seed: int, chunk: int = 256,
                    training: bool = False) -> Dict[str, Tensor]:
    """n rendered images with ground truth: uniform azimuth, random creatures and backgrounds,
    some without their face or tail (``p_faceless`` / ``p_tailless``); ``training``: also the
    training set's plain bodies and partial faces (``p_partless``, ``p_partial_face``, drawn
    after every other draw: at 0 the images are v8's)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(low, high, *shape):
        return torch.rand(*(shape or (n,)), generator=g) * (high - low) + low

    kinds = torch.randint(0, len(KINDS), (n,), generator=g)
    flags = torch.rand(n, 3, generator=g) < 0.5
    missing = torch.rand(n, generator=g)  # < p_faceless: no face; next p_tailless: no tail
    faceless = missing < settings.p_faceless
    tailless = (missing >= settings.p_faceless) & (missing < settings.p_faceless + settings.p_tailless)
    creatures = [Creature(KINDS[k], *map(bool, f), face=not nf, tail=not nt)
                 for k, f, nf, nt in zip(kinds.tolist(), flags.tolist(), faceless.tolist(), tailless.tolist())]
    azimuth = uniform(-180.0, 180.0)
    elevation = uniform(*settings.elevation_range)
    distance = uniform(*settings.distance_range)
    fovy = uniform(*settings.fovy_range)
    light = uniform(-settings.light_jitter, settings.light_jitter)
    # background: white half the time, else a random light or dark plain colour
    background = torch.where((torch.rand(n, 1, generator=g) < 0.5), torch.ones(n, 3), torch.rand(n, 3, generator=g))
    if training:  # drawn last: v8's draws unchanged
        creatures = partial_faces(plain_bodies(creatures, settings, g), settings, g)
    out = render_batched(creatures, elevation, azimuth, distance, fovy, chunk=chunk, light_jitter=light,
                         background=background)
    present = torch.tensor([[c.has(a) for a in ATTRIBUTES] for c in creatures], dtype=torch.bool).reshape(n, len(ATTRIBUTES))
    return {"image": (out["image"] * 255).round().to(torch.uint8), "silhouette": out["silhouette"] > 0,
            "view": out["view"], "kind": kinds,
            "attributes": (out["visible"] & present).float(), "elevation": elevation, "azimuth": azimuth}


def plain_bodies(creatures: List[Creature], settings: JudgeSettings, g: torch.Generator) -> List[Creature]:
    """A share ``p_partless`` of the creatures (whatever they had) made plain bodies of their kind:
    no face, tail, smile, stripes or hat. No draw at share 0."""
    if settings.p_partless <= 0 or not creatures:
        return creatures
    chosen = (torch.rand(len(creatures), generator=g) < settings.p_partless).tolist()
    return [Creature(c.kind, face=False, tail=False) if plain else c for c, plain in zip(creatures, chosen)]


def partial_faces(creatures: List[Creature], settings: JudgeSettings, g: torch.Generator) -> List[Creature]:
    """A share ``p_partial_face`` of the creatures with a face get a partial one: half cut by a
    half-plane through the face disk (a random direction, offset uniform within +-0.6 of its
    radius: 20-80 % of the disk kept), half shrunk (``partial_face_min_scale`` .. 1). No draw at
    share 0. The ground truth follows from the render (the renderer's visibility rule)."""
    n = len(creatures)
    if settings.p_partial_face <= 0 or n == 0:
        return creatures
    chosen = (torch.rand(n, generator=g) < settings.p_partial_face).tolist()
    cut = (torch.rand(n, generator=g) < 0.5).tolist()
    direction = (torch.rand(n, generator=g) * 360.0).tolist()
    offset = ((torch.rand(n, generator=g) * 2.0 - 1.0) * 0.6 * FACE_RADIUS).tolist()
    low = settings.partial_face_min_scale
    scale = (low + torch.rand(n, generator=g) * (1.0 - low)).tolist()
    return [c if not (chosen[i] and c.face) else
            dataclasses.replace(c, face_cut=(direction[i], offset[i])) if cut[i] else
            dataclasses.replace(c, face_scale=scale[i])
            for i, c in enumerate(creatures)]


def colour_drift(images: Tensor, silhouette: Tensor, settings: JudgeSettings, g: torch.Generator) -> Tensor:
    """Images [B, 3, H, W] in [0, 1] with the object (``silhouette`` [B, 1, H, W], bool or its
    share of each pixel) drifted in colour, as score distillation's orbits drift (a brown bear
    turns red, a frog saturated green): per image and channel gain 1 + u, offset u / 2, u uniform
    in [-colour_drift, colour_drift] (two draws). The background is kept."""
    B = images.shape[0]
    d = settings.colour_drift
    gain = 1.0 + (torch.rand(B, 3, generator=g) * 2.0 - 1.0) * d
    offset = (torch.rand(B, 3, generator=g) * 2.0 - 1.0) * d / 2.0
    drifted = (images * gain[..., None, None] + offset[..., None, None]).clamp(0.0, 1.0)
    weight = silhouette.float()
    return images + weight * (drifted - images)


def lower_resolution(images: Tensor, settings: JudgeSettings, g: torch.Generator) -> Tensor:
    """A share ``p_lowres`` of the images at a side uniform in ``lowres_sides`` (``at_resolution``)."""
    return imaging.lower_resolution(images, settings.p_lowres, settings.lowres_sides, g)


def augment(images: Tensor, settings: JudgeSettings, g: torch.Generator) -> Tensor:
    """Lower resolution (``p_lowres``), then blur, noise, colour jitter, small zoom and shift
    (border filled with the corner colour)."""
    B = images.shape[0]
    if settings.p_lowres > 0:
        images = lower_resolution(images, settings, g)

    def uniform(low, high, *shape):
        return torch.rand(*(shape or (B,)), generator=g) * (high - low) + low

    apply = (torch.rand(B, generator=g) < settings.p_augment).float()
    # geometry: zoom and shift through an affine grid, background colour outside
    scale = 1.0 + apply * uniform(-settings.scale_jitter, settings.scale_jitter)
    shift = apply[:, None] * uniform(-settings.shift_jitter, settings.shift_jitter, B, 2) * 2.0 / images.shape[-1]
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    corner = images[:, :, 0, 0][:, :, None, None]
    x = F.grid_sample(images - corner, grid, align_corners=False, padding_mode="zeros") + corner
    # colour: brightness, contrast, saturation
    j = settings.colour_jitter
    brightness = 1.0 + apply * uniform(-j, j)
    contrast = 1.0 + apply * uniform(-j, j)
    saturation = 1.0 + apply * uniform(-j, j)
    x = x * brightness[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast[:, None, None, None] + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * saturation[:, None, None, None] + grey
    x = gaussian_blur(x, apply * uniform(0.0, settings.blur_sigma))
    x = x + torch.randn(x.shape, generator=g) * (apply * uniform(0.0, settings.noise_std))[:, None, None, None]
    return x.clamp(0.0, 1.0)


def scrambled_negatives(images: Tensor, settings: JudgeSettings, g: torch.Generator,
                        mask: Optional[Tensor] = None) -> Tensor:
    """Images [B, 3, H, W] in [0, 1] -> the same with the object region ``mask`` [B, 1, H, W]
    (default ``object_mask``; training passes the rendered silhouette, which also covers a white
    face on a white background) destroyed: a share ``p_noise_fill`` refilled with smooth random
    colour noise (the silhouette kept), the rest patch-shuffled (a patch side from
    ``scramble_patches``). No face, tail or other attribute stays recognisable."""
    mask = object_mask(images) if mask is None else mask.bool()
    out = images.clone()
    B = images.shape[0]
    noise_fill = torch.rand(B, generator=g) < settings.p_noise_fill
    sigma = torch.rand(B, generator=g) * settings.scramble_noise_sigma
    noise = gaussian_blur(torch.rand(images.shape, generator=g), sigma)
    # the blur flattens the noise: stretch each image's back to the full range
    low = noise.amin(dim=(1, 2, 3), keepdim=True)
    high = noise.amax(dim=(1, 2, 3), keepdim=True)
    noise = (noise - low) / (high - low).clamp_min(1e-6)
    for i in range(B):
        if noise_fill[i]:
            out[i] = torch.where(mask[i], noise[i], images[i])
        else:
            patch = settings.scramble_patches[int(torch.randint(len(settings.scramble_patches), (), generator=g))]
            out[i] = patch_shuffle(images[i], mask[i], patch, g)
    return out
