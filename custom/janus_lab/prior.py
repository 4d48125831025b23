"""The lab prior: a small text-to-image latent diffusion model in the Stable Diffusion layout.

Folder layout (loads with ``from_pretrained`` wherever a Stable Diffusion folder is expected:
threestudio's stock prompt processor and ``stable-diffusion-guidance``, StableDiffusionPipeline,
our backbone and processors, diffusers 0.19.3 and 0.42)::

    model_index.json   StableDiffusionPipeline, no safety checker
    unet/              UNet2DConditionModel, latent 16x16x4
    vae/               AutoencoderKL with one down-sampling (factor 2): 32x32 RGB <-> 16x16x4
    text_encoder/      CLIPTextModel (narrow; the 49408-token embedding table dominates its size)
    tokenizer/         CLIPTokenizer with the real CLIP BPE (lab/vocab.py)
    scheduler/         DDPMScheduler, Stable Diffusion's scaled_linear betas 0.00085 -> 0.012
    lab_training.json  the training settings (including the world's bias) and wall times

Weights are stored in fp16 (safetensors) and load as fp32 by default (the text encoder's config
says float32). Training (``train_prior``): the VAE first (L1 + small KL), then the UNet and the
text encoder together on the VAE's latents (epsilon prediction, the caption dropped for 10 % of
the samples so that the empty prompt is the unconditional of classifier-free guidance, min-SNR
loss weighting, EMA of the weights).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from antijanus.utils.errors import ConfigError, require_probability
from .data import WorldBias, make_samples

LATENT_CHANNELS = 4


@dataclass(frozen=True)
class PriorSettings:
    """Everything that determines the trained prior (saved as lab_training.json)."""

    seed: int = 1  # prior v6 (priors up to v5: 0; custom/janus_lab/docs/preregistration.md, fifth entry)
    bias: WorldBias = field(default_factory=WorldBias)
    threads: int = 2  # torch threads (fixed: a run is reproducible with the same count; the committed prior used 2)
    # text encoder (CLIP layout)
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_ff: int = 128
    # VAE
    vae_channels: Tuple[int, ...] = (32, 32)  # len - 1 down-samplings: factor 2
    vae_steps: int = 2000  # prior v4 (v3: 500)
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # a share of the VAE's training images at a lower effective resolution (shrunk to a side in
    # ``vae_lowres_sides`` and enlarged back), reconstructed as they are: a 3D run's latent volume
    # renders smooth latents, which prior v3's VAE (0: off, 500 steps) decodes in false colours
    # (README, "The 3D measurement examined on known objects"); prior v4: 0.3.
    vae_p_lowres: float = 0.3
    vae_lowres_sides: Tuple[int, int] = (8, 16)
    # EQ-VAE (Kouzelis et al., ICML 2025: "EQ-VAE: Equivariance Regularized Latent Space for Improved
    # Generative Image Modeling"): with this probability a batch's latents are transformed before
    # decoding, scaled by a factor uniform in ``vae_equivariance_scales`` (bilinear) and turned by a
    # multiple of 90 degrees, and the decoder must give the images transformed the same way,
    # D(tau(E(x))) = tau(x). A latent volume renders resampled latents; an unregularised latent
    # space decodes them in false colours (README, "Round 3"). Prior v6: 0.5; 0: off (priors up to v4).
    # The authors' code (zelaki/eqvae, ldm/models/autoencoder.py) uses p 0.5, one scale from
    # {8, ..., 31} / 32 and a turn of 1-3 quarters, both on every regularised batch; ours: a
    # continuous scale (our 16x16 latents: 0.5 keeps 8x8) and 0-3 quarters (the scale alone a
    # quarter of the time).
    vae_p_equivariance: float = 0.5  # prior v6
    vae_equivariance_scales: Tuple[float, float] = (0.5, 1.0)
    # UNet
    unet_channels: Tuple[int, ...] = (32, 64, 64)  # cross-attention at 8x8 and 4x4 only
    unet_heads: int = 4
    unet_steps: int = 12000  # 56 min on this 2-core CPU with 2 threads (see README)
    unet_batch: int = 32
    unet_lr: float = 1e-3
    unet_warmup: int = 200
    ema_decay: float = 0.999
    p_uncond: float = 0.1  # caption dropped -> "" (the unconditional of CFG)
    min_snr_gamma: float = 5.0  # min-SNR-gamma loss weighting (Hang et al. 2023); 0: plain MSE
    snapshots: Tuple[int, ...] = ()  # steps after which the averaged weights are also saved (a study)

    def __post_init__(self) -> None:
        from antijanus.utils.imaging import check_lowres

        check_lowres("vae_p_lowres", self.vae_p_lowres, "vae_lowres_sides", self.vae_lowres_sides)
        require_probability("vae_p_equivariance", self.vae_p_equivariance)
        scales = self.vae_equivariance_scales
        if (not isinstance(scales, (tuple, list)) or len(scales) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in scales)
                or not 0.0 < scales[0] <= scales[1] <= 1.0):
            raise ConfigError("vae_equivariance_scales", scales,
                              "(smallest, largest) scale factors, 0 < smallest <= largest <= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def scheduler_config() -> dict:
    """Stable Diffusion's training noise schedule."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False, steps_offset=1)


# Keys of Stable Diffusion's scheduler config that DDPM does not take but DDIM (our sampler,
# StableDiffusionPipeline's alternatives) reads from the same file.
SCHEDULER_EXTRAS = {"set_alpha_to_one": False, "skip_prk_steps": True}


def build_vae(settings: PriorSettings):
    from diffusers import AutoencoderKL

    n = len(settings.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=32,
                         block_out_channels=tuple(settings.vae_channels), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         norm_num_groups=16)


def build_unet(settings: PriorSettings, latent_size: int = 16):
    from diffusers import UNet2DConditionModel

    n = len(settings.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=tuple(settings.unet_channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=settings.text_width, attention_head_dim=settings.unet_heads, norm_num_groups=16)


def build_text_encoder(settings: PriorSettings, vocab_size: int = 49408):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=settings.text_width,
                            intermediate_size=settings.text_ff, num_hidden_layers=settings.text_layers,
                            num_attention_heads=settings.text_heads, max_position_embeddings=77,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                            projection_dim=settings.text_width)
    model = CLIPTextModel(config)
    # Zero token embeddings: a token never seen in training stays exactly 0 (no random
    # direction for words outside the world), and the stored table compresses.
    torch.nn.init.zeros_(model.get_input_embeddings().weight)
    return model


# ----------------------------------------------------------------------------- saving


def _fp16_state(module: torch.nn.Module, prefix: str = "") -> Dict[str, Tensor]:
    return {prefix + k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()
            if v.is_floating_point()}


def save_text_encoder(model, folder: str) -> None:
    """CLIPTextModel in the layout every transformers version reads: keys prefixed
    ``text_model.`` (transformers 4.28 needs them), fp16 tensors, a config that says float32."""
    from antijanus.utils.cache import save_safetensors

    os.makedirs(folder, exist_ok=True)
    config = model.config.to_dict()
    config.update(torch_dtype="float32", dtype="float32", architectures=["CLIPTextModel"])
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    state = _fp16_state(model)
    state = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}
    save_safetensors(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def save_diffusers(model, folder: str) -> None:
    """A diffusers model folder with fp16 weights (loaded as fp32 unless asked otherwise); the
    model itself is left as it was."""
    import copy

    copy.deepcopy(model).to(torch.float16).save_pretrained(folder, safe_serialization=True)


def save_prior(out: str, unet, vae, text_encoder, tokenizer_folder: Optional[str] = None) -> None:
    """The Stable Diffusion folder (unet/, vae/, text_encoder/, scheduler/, model_index.json; the
    tokenizer copied from ``tokenizer_folder`` when given)."""
    import shutil

    save_diffusers(unet, os.path.join(out, "unet"))
    save_diffusers(vae, os.path.join(out, "vae"))
    save_text_encoder(text_encoder, os.path.join(out, "text_encoder"))
    write_scheduler(out)
    write_model_index(out)
    if tokenizer_folder is not None:
        shutil.copytree(tokenizer_folder, os.path.join(out, "tokenizer"), dirs_exist_ok=True)


def write_model_index(folder: str) -> None:
    import diffusers

    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def write_scheduler(folder: str) -> None:
    from diffusers import DDPMScheduler

    path = os.path.join(folder, "scheduler")
    DDPMScheduler(**scheduler_config()).save_pretrained(path)
    with open(os.path.join(path, "scheduler_config.json")) as f:
        config = json.load(f)
    config.update(SCHEDULER_EXTRAS)
    with open(os.path.join(path, "scheduler_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- training helpers


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def log_every(seconds: float = 30.0, log: Callable[[str], None] = print) -> Callable[[str], None]:
    """A progress logger that passes at most one message per ``seconds`` on to ``log``."""
    last = [0.0]

    def tick(message: str) -> None:
        now = time.time()
        if now - last[0] >= seconds:
            last[0] = now
            log(message)

    return tick


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
            from antijanus.utils.imaging import lower_resolution

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
    to the same multiple of it, antialiased) and turned by k * 90 degrees, k uniform in 0..3."""
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
    from diffusers import DDPMScheduler

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
    from transformers import AutoTokenizer

    from .vocab import write_clip_tokenizer

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
