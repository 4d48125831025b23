"""Judge v9's training images that look like score distillation's output (issue 30; the seventh
entry of docs/preregistration.md, item 5): rendered training images encoded and decoded by the
committed prior's VAE, some with their latents degraded as a latent volume render degrades them
(a mix towards the object's mean latent, a lower latent resolution, blur, noise) before decoding.
The ground truth stays the render's: the VAE keeps the view, and a part that a degradation wipes
out is the label noise a real orbit has too (the degradations are kept moderate).

Computed once with the training data (``sds_like``): fp32, in chunks, every random draw made up
front from its own seed, so the result depends on the seed and the thread count only.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor

from .images import gaussian_blur
from .judge_settings import LATENT_SIZE, JudgeSettings
from .model_files import model_path


def load_prior_vae(folder: Optional[str] = None) -> AutoencoderKL:
    """The prior's VAE (``<prior>/vae``; default the committed prior), fp32, eval mode."""
    folder = os.path.join(model_path("prior"), "vae") if folder is None else folder
    return AutoencoderKL.from_pretrained(folder).float().eval()


def latent_draws(n: int, settings: JudgeSettings, g: torch.Generator) -> Dict[str, Tensor]:
    """Every draw of the round trips, up front (a chunk's result does not depend on the others):
    which images go through the VAE, which of those are degraded, and the degradations'
    magnitudes (zero where an image is not degraded)."""
    chosen = torch.rand(n, generator=g) < settings.p_vae_roundtrip
    degraded = chosen & (torch.rand(n, generator=g) < settings.p_latent_degrade)
    on = degraded.float()
    low, high = settings.latent_lowres_sides
    side = torch.randint(low, high + 1, (n,), generator=g)
    return {"chosen": chosen, "degraded": degraded,
            "mix": on * torch.rand(n, generator=g) * settings.latent_mean_mix,
            "side": torch.where(degraded, side, torch.full_like(side, LATENT_SIZE)),
            "blur": on * torch.rand(n, generator=g) * settings.latent_blur_sigma,
            "noise": on * torch.rand(n, generator=g) * settings.latent_noise_std,
            "noise_seed": torch.randint(0, 2 ** 31 - 1, (n,), generator=g)}


def degrade_latents(z: Tensor, silhouette: Tensor, draws: Dict[str, Tensor]) -> Tensor:
    """Latents [B, C, h, w] degraded per image (``latent_draws`` rows of these images): mixed
    towards the mean latent of the object (``silhouette`` [B, 1, H, W], pooled to the latents'
    side) by ``mix``, down-sampled to ``side`` and back (bilinear), blurred (``blur``, latent
    pixels), and given Gaussian noise of std ``noise`` (its own generator per image)."""
    h, w = z.shape[-2:]
    weight = F.adaptive_avg_pool2d(silhouette.float(), (h, w))
    mean = (z * weight).sum((2, 3), keepdim=True) / weight.sum((2, 3), keepdim=True).clamp_min(1e-6)
    z = z + draws["mix"][:, None, None, None] * weight * (mean - z)
    out = z.clone()
    for side in draws["side"].unique().tolist():
        if side == h:
            continue
        pick = draws["side"] == side
        small = F.interpolate(z[pick], (side, side), mode="bilinear", align_corners=False, antialias=True)
        out[pick] = F.interpolate(small, (h, w), mode="bilinear", align_corners=False)
    out = gaussian_blur(out, draws["blur"])
    noise = torch.stack([torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                         for s in draws["noise_seed"].tolist()])
    return out + noise * draws["noise"][:, None, None, None]


@torch.no_grad()
def vae_roundtrip(images: Tensor, silhouette: Tensor, draws: Dict[str, Tensor], vae: AutoencoderKL,
                  chunk: int = 256) -> Tensor:
    """uint8 images [B, 3, H, W] -> the same through the VAE (posterior mean; the latents of the
    ``draws["degraded"]`` rows degraded, ``degrade_latents``), uint8, same shape."""
    out = []
    for i in range(0, images.shape[0], chunk):
        sl = slice(i, i + chunk)
        z = vae.encode(images[sl].float() / 127.5 - 1.0).latent_dist.mean
        rows = {k: v[sl] for k, v in draws.items()}
        z = torch.where(rows["degraded"][:, None, None, None], degrade_latents(z, silhouette[sl], rows), z)
        x = vae.decode(z).sample.clamp(-1.0, 1.0)
        out.append(((x + 1.0) * 127.5).round().to(torch.uint8))
    return torch.cat(out)


def sds_like(data: Dict[str, Tensor], settings: JudgeSettings, seed: int,
             vae: Optional[AutoencoderKL] = None, chunk: int = 256) -> Dict[str, Tensor]:
    """``render_labelled``'s data with a share ``p_vae_roundtrip`` of its white-background images
    replaced by their VAE round trips (ground truth and silhouette unchanged); the data itself (no
    copy, the VAE never loaded) when the share is 0. Only white backgrounds: the prior saw nothing
    else, and its VAE turns a coloured background and the object's colours pale (what a method's
    orbit has: white). Deterministic for a seed and ``settings.threads``."""
    if settings.p_vae_roundtrip <= 0:
        return data
    draws = latent_draws(data["image"].shape[0], settings, torch.Generator().manual_seed(seed))
    chosen = draws["chosen"] & (data["image"][:, :, 0, 0] == 255).all(1)
    if not chosen.any():
        return data
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        vae = load_prior_vae() if vae is None else vae
        image = data["image"].clone()
        image[chosen] = vae_roundtrip(image[chosen], data["silhouette"][chosen],
                                      {k: v[chosen] for k, v in draws.items()}, vae, chunk)
    finally:
        torch.set_num_threads(threads)
    return {**data, "image": image}
