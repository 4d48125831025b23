"""Training the lab prior (``train_prior``): the VAE first (L1 + MSE + a small KL, a share of
its images at a lower resolution, EQ-VAE's equivariance), then the UNet and the text encoder
together on the VAE's latents (epsilon prediction, the caption dropped for ``p_uncond`` of the
samples, min-SNR weighting, an EMA of the weights). Deterministic from ``PriorSettings`` (one
process, fixed thread count)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import Tensor
from transformers import AutoTokenizer

from antijanus.utils.imaging import lower_resolution
from .data import make_samples
from .prior import PriorSettings, build_text_encoder, build_unet, build_vae, scheduler_config
from .prior_folder import save_prior
from .training import log_every
from .vocab import write_clip_tokenizer


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_vae(vae, images: Tensor, settings: PriorSettings, g: torch.Generator, log=print) -> Dict[str, float]:
    """L1 + MSE reconstruction of [-1, 1] images plus a small KL term; with ``vae_p_lowres`` a
    share of them at a lower effective resolution (``utils.imaging.lower_resolution``)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    vae.train()
    tick = log_every(30.0, log)
    for step in range(settings.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.vae_steps, settings.vae_lr, 100)
        index = torch.randint(0, images.shape[0], (settings.vae_batch,), generator=g)
        x = images[index].float() / 127.5 - 1.0
        if settings.vae_p_lowres > 0:  # (off: the committed prior's random draws unchanged)
            x = lower_resolution(x * 0.5 + 0.5, settings.vae_p_lowres, settings.vae_lowres_sides, g) * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        if settings.vae_p_equivariance > 0 and float(torch.rand((), generator=g)) < settings.vae_p_equivariance:
            z, x = equivariance_pair(z, x, settings.vae_equivariance_scales, g)
        recon = vae.decode(z).sample
        kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1.0 - posterior.logvar).mean()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + settings.vae_kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tick(f"vae step {step}/{settings.vae_steps} loss {loss.item():.4f} kl {kl.item():.1f}")
    vae.eval()
    return {"vae_final_loss": float(loss.item())}


def equivariance_pair(z: Tensor, x: Tensor, scales: Tuple[float, float], g: torch.Generator) -> Tuple[Tensor, Tensor]:
    """EQ-VAE's transform tau applied to latents ``z`` [B, C, h, w] and images ``x`` [B, 3, H, W]
    alike: scaled by one factor uniform in ``scales`` (latent side rounded, at least 2; the images
    to the same multiple of it, antialiased) and turned by k * 90 degrees, k uniform in 0..3.

    The authors' code (zelaki/eqvae, ldm/models/autoencoder.py) draws one scale from
    {8, ..., 31} / 32 and a turn of 1-3 quarters, both on every regularised batch; here the scale
    is continuous (16x16 latents: 0.5 keeps 8x8) and the turn 0-3 quarters (the scale alone a
    quarter of the time)."""
    factor = scales[0] + (scales[1] - scales[0]) * float(torch.rand((), generator=g))
    k = int(torch.randint(0, 4, (), generator=g))
    side = max(2, round(z.shape[-1] * factor))
    ratio = x.shape[-1] // z.shape[-1]
    if side != z.shape[-1]:
        z = F.interpolate(z, size=(side, side), mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=(side * ratio, side * ratio), mode="bilinear", align_corners=False, antialias=True)
    return torch.rot90(z, k, dims=(-2, -1)), torch.rot90(x, k, dims=(-2, -1))


@torch.no_grad()
def encode_latents(vae, images: Tensor, batch: int = 256) -> Tuple[Tensor, Tensor]:
    means, stds = [], []
    for i in range(0, images.shape[0], batch):
        posterior = vae.encode(images[i:i + batch].float() / 127.5 - 1.0).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_psnr(vae, images: Tensor) -> float:
    """PSNR (dB, images in [0, 1]) of encode (posterior mean) -> decode."""
    x = images.float() / 127.5 - 1.0
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss(recon * 0.5 + 0.5, x * 0.5 + 0.5).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def tokenize(tokenizer, texts: Sequence[str]) -> Tensor:
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


class EMA:
    def __init__(self, modules: Sequence[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the averages (twice: back as before)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def encode_unique(text_encoder, ids: Tensor) -> Tensor:
    """The text encoder's hidden states for a batch of token ids, each distinct caption encoded
    once (the world has a few hundred distinct captions; gradients flow to every use)."""
    unique, inverse = torch.unique(ids, dim=0, return_inverse=True)
    return text_encoder(unique)[0][inverse]


def train_diffusion(unet, text_encoder, latents_mean: Tensor, latents_std: Tensor, token_ids: Tensor,
                    empty_ids: Tensor, settings: PriorSettings, g: torch.Generator, log=print,
                    snapshot: Optional[Callable[[int], None]] = None) -> Dict[str, float]:
    """Epsilon-prediction training of the UNet and the text encoder on (scaled) latents.
    ``snapshot(step)`` is called with the averaged weights in the models after each step in
    ``settings.snapshots`` (a study of how the prior grows; not part of the committed run)."""
    scheduler = DDPMScheduler(**scheduler_config())
    abar = scheduler.alphas_cumprod.float()
    snr = abar / (1.0 - abar)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.unet_lr, weight_decay=0.01)
    ema = EMA([unet, text_encoder], settings.ema_decay)
    unet.train()
    text_encoder.train()
    tick = log_every(30.0, log)
    n = latents_mean.shape[0]
    running = 0.0
    for step in range(settings.unet_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.unet_steps, settings.unet_lr, settings.unet_warmup)
        index = torch.randint(0, n, (settings.unet_batch,), generator=g)
        x0 = latents_mean[index] + latents_std[index] * torch.randn(latents_mean[index].shape, generator=g)
        ids = token_ids[index].clone()
        drop = torch.rand(settings.unet_batch, generator=g) < settings.p_uncond
        ids[drop] = empty_ids
        t = torch.randint(0, scheduler.config.num_train_timesteps, (settings.unet_batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
        context = encode_unique(text_encoder, ids)
        eps = unet(x_t, t, encoder_hidden_states=context).sample
        per_sample = F.mse_loss(eps, noise, reduction="none").mean(dim=(1, 2, 3))
        if settings.min_snr_gamma > 0:  # min-SNR-gamma for epsilon prediction: min(SNR, gamma) / SNR
            per_sample = per_sample * (snr[t].clamp(max=settings.min_snr_gamma) / snr[t])
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update(step)
        if snapshot is not None and step + 1 in settings.snapshots:
            ema.swap()
            snapshot(step + 1)
            ema.swap()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        tick(f"unet step {step}/{settings.unet_steps} loss {running:.4f} lr {optimizer.param_groups[0]['lr']:.2e}")
    ema.copy_to_model()
    unet.eval()
    text_encoder.eval()
    return {"unet_final_loss": running}


def train_prior(out: str, settings: PriorSettings = PriorSettings(), log=print) -> Dict[str, object]:
    """Train the prior from scratch and write its Stable Diffusion folder to ``out``.
    Deterministic from ``settings`` (one process, fixed thread count)."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    timings: Dict[str, float] = {}
    start = time.time()
    os.makedirs(out, exist_ok=True)
    write_clip_tokenizer(os.path.join(out, "tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
    samples, images = make_samples(settings.bias)
    images = (images * 255.0).round().to(torch.uint8)
    timings["data_s"] = time.time() - start
    log(f"data: {len(samples)} images in {timings['data_s']:.0f} s")

    g = torch.Generator().manual_seed(settings.seed)
    vae = build_vae(settings)
    t0 = time.time()
    figures = train_vae(vae, images, settings, g, log)
    held_out = make_samples(dataclasses.replace(settings.bias, seed=settings.bias.seed + 1000), n=512)[1]
    figures["vae_psnr_held_out_db"] = reconstruction_psnr(vae, (held_out * 255).round())
    timings["vae_s"] = time.time() - t0
    log(f"vae: {timings['vae_s']:.0f} s, held-out PSNR {figures['vae_psnr_held_out_db']:.2f} dB")

    mean, std = encode_latents(vae, images)
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    token_ids = tokenize(tokenizer, [s.text for s in samples])
    empty_ids = tokenize(tokenizer, [""])[0]
    unet = build_unet(settings, latent_size=images.shape[-1] // 2 ** (len(settings.vae_channels) - 1))
    text_encoder = build_text_encoder(settings, vocab_size=len(tokenizer))
    t0 = time.time()
    tokenizer_folder = os.path.join(out, "tokenizer")

    def snapshot(step: int) -> None:
        save_prior(os.path.join(out, "snapshots", f"step-{step}"), unet, vae, text_encoder, tokenizer_folder)
        log(f"snapshot of the averaged weights at step {step} ({time.time() - t0:.0f} s)")

    figures.update(train_diffusion(unet, text_encoder, mean * scaling, std * scaling, token_ids, empty_ids,
                                   settings, g, log, snapshot=snapshot))
    timings["unet_s"] = time.time() - t0
    save_prior(out, unet, vae, text_encoder)
    timings["total_s"] = time.time() - start
    record = {"settings": settings.to_dict(), "figures": figures, "timings": timings, "scaling_factor": scaling,
              "parameters": {"unet": sum(p.numel() for p in unet.parameters()),
                             "vae": sum(p.numel() for p in vae.parameters()),
                             "text_encoder": sum(p.numel() for p in text_encoder.parameters())},
              "torch": torch.__version__, "threads": settings.threads}
    with open(os.path.join(out, "lab_training.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record
