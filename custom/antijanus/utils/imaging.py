"""Image helpers for the 2D tools: tensors to PIL, labelled grids, lower effective resolution."""

from __future__ import annotations

import textwrap
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from .errors import ConfigError, require_probability


def at_resolution(images: Tensor, side: int) -> Tensor:
    """Images [B, C, H, W] in [0, 1] shrunk to ``side`` x ``side`` (antialiased) and enlarged back to
    H x W (bilinear): the same picture with ``side`` pixels of detail."""
    H, W = images.shape[-2:]
    small = F.interpolate(images, (side, side), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, (H, W), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def check_lowres(p_key: str, p, sides_key: str, sides, largest: Optional[int] = None) -> None:
    """A ConfigError naming the key unless ``p`` is a probability and ``sides`` two integer sides
    (smallest, largest), 2 <= smallest <= largest (<= ``largest`` when given)."""
    require_probability(p_key, p)
    bound = "" if largest is None else f" <= {largest}"
    if (not isinstance(sides, (tuple, list)) or len(sides) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in sides)
            or not 2 <= sides[0] <= sides[1] <= (largest or sides[1])):
        raise ConfigError(sides_key, sides, f"(smallest, largest) integer sides, 2 <= smallest <= largest{bound}")


def lower_resolution(images: Tensor, p: float, sides, generator) -> Tensor:
    """A share ``p`` of the images [B, C, H, W] in [0, 1] ``at_resolution`` of a side uniform in
    ``sides`` (smallest, largest; inclusive); the draws: which images, then every image's side."""
    B = images.shape[0]
    chosen = torch.rand(B, generator=generator) < p
    drawn = torch.randint(sides[0], sides[1] + 1, (B,), generator=generator)
    if not chosen.any():
        return images
    out = images.clone()
    for side in drawn[chosen].unique().tolist():
        pick = chosen & (drawn == side)
        out[pick] = at_resolution(images[pick], side)
    return out


def to_pil(image: Tensor):
    """[3, H, W] in [0, 1] -> PIL image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(array)


def image_grid(images: Sequence[Tensor], labels: Sequence[str], columns: Optional[int] = None,
               cell: int = 256, label_height: int = 40):
    """A grid of images, each with a label (wrapped to two lines) above it."""
    columns = columns or len(images)
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (cell * columns, (cell + label_height) * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * cell, (i // columns) * (cell + label_height)
        canvas.paste(to_pil(image).resize((cell, cell)), (x, y + label_height))
        for j, line in enumerate(textwrap.wrap(label, width=cell // 7, max_lines=2, placeholder=" ...")):
            draw.text((x + 4, y + 4 + 16 * j), line, fill="black")
    return canvas
