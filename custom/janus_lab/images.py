"""Image operations of the lab on batches [B, 3, H, W] in [0, 1]: the object on its plain
background, a per-image blur, and the two scrambles (pixels, patches) that keep an object's
colours and destroy its structure.

The object is told from the background by colour: pixels that differ from the top-left corner's
colour by more than ``tolerance`` (summed over channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

OBJECT_TOLERANCE = 0.1  # summed channel difference from the corner colour that makes a pixel the object's


def object_mask(images: Tensor, tolerance: float = OBJECT_TOLERANCE) -> Tensor:
    """[B, 1, H, W]: pixels whose colour differs from the top-left corner's by more than
    ``tolerance`` (summed over channels), the object on a plain background."""
    return (images - images[:, :, :1, :1]).abs().sum(1, keepdim=True) > tolerance


def scramble_object_pixels(frames: Tensor, generator: torch.Generator, tolerance: float = OBJECT_TOLERANCE) -> Tensor:
    """Each frame with its object pixels (colour differing from the top-left corner's by more than
    ``tolerance``, summed over channels) shuffled among themselves; the background is untouched."""
    out = frames.clone()
    n, c = frames.shape[:2]
    flat_in, flat_out = frames.reshape(n, c, -1), out.reshape(n, c, -1)
    for i in range(n):
        index = ((flat_in[i] - flat_in[i, :, :1]).abs().sum(0) > tolerance).nonzero().flatten()
        flat_out[i, :, index] = flat_in[i, :, index[torch.randperm(index.numel(), generator=generator)]]
    return out


def patch_shuffle(image: Tensor, mask: Tensor, patch: int, g: torch.Generator) -> Tensor:
    """One image [3, H, W] with its patches (``patch`` x ``patch``) that touch the object
    (``mask`` [1, H, W]) permuted among themselves."""
    C, H, W = image.shape
    tiles = image.reshape(C, H // patch, patch, W // patch, patch).permute(1, 3, 0, 2, 4).reshape(-1, C, patch, patch)
    touched = mask.reshape(H // patch, patch, W // patch, patch).any(3).any(1).flatten().nonzero().flatten()
    tiles = tiles.clone()
    tiles[touched] = tiles[touched[torch.randperm(touched.numel(), generator=g)]]
    return tiles.reshape(H // patch, W // patch, C, patch, patch).permute(2, 0, 3, 1, 4).reshape(C, H, W)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Per-image Gaussian blur (5x5 kernel); sigma [B] in pixels (0: unchanged)."""
    x = torch.arange(-2, 3, dtype=torch.float32)
    s = sigma.clamp_min(1e-3)[:, None]
    k1 = torch.exp(-0.5 * (x[None] / s) ** 2)
    k1 = k1 / k1.sum(-1, keepdim=True)  # [B, 5]
    kernel = k1[:, :, None] * k1[:, None, :]  # [B, 5, 5]
    B, C, H, W = images.shape
    weight = kernel[:, None].repeat_interleave(C, 0)  # [B*C, 1, 5, 5]
    out = F.conv2d(F.pad(images.reshape(1, B * C, H, W), (2, 2, 2, 2), mode="replicate"), weight, groups=B * C)
    return out.reshape(B, C, H, W)
