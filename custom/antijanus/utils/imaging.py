"""Image helpers for the 2D tools: tensors to PIL, labelled grids."""

from __future__ import annotations

import textwrap
from typing import Optional, Sequence

from torch import Tensor


def to_pil(image: Tensor):
    """[3, H, W] in [0, 1] -> PIL image."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(array)


def image_grid(images: Sequence[Tensor], labels: Sequence[str], columns: Optional[int] = None,
               cell: int = 256, label_height: int = 40):
    """A grid of images, each with a label (wrapped to two lines) above it."""
    from PIL import Image, ImageDraw

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
