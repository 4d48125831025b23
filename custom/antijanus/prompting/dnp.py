"""Diffusion-negative sampling (DNS) and prompting (DNP) (Desai & Vasconcelos; docs/algorithms.md section 3).

DNS samples the image *least* compliant with a prompt p under the diffusion model by guiding
away from p. With e_p = eps(x_t, p) and e_0 = eps(x_t, "") we use

    eps_DNS = e_p + s * (e_0 - e_p)

i.e. classifier-free guidance with p and the empty prompt swapped, as the public reproduction
does. It follows from sampling p(x) p(p | x)^-(s-1): the score grad log p(x) - (s-1) grad log
p(p | x) = grad log p(x) - (s-1) (grad log p(x | p) - grad log p(x)); with eps = -sigma * score,
eps = e_0 - (s-1) (e_p - e_0) = e_p + s (e_0 - e_p). The guidance direction, e_0 - e_p, is the
negation of the prompt direction e_p - e_0 of ordinary CFG:

    eps_CFG = e_n + s * (e_p - e_n)      (n: negative prompt, "" by default)

A captioner (or the user) turns the DNS image into the negative prompt n*; (p, n*) is then used
for generation (auto-DNP when a captioner does it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

import torch
from diffusers import DDIMScheduler
from PIL import Image
from torch import Tensor

from ..backbones.base import BackboneOptions
from ..backbones.stable_diffusion import StableDiffusionBackbone
from ..utils.cache import atomic_write, cache_key, invalid_content, read_json, write_json
from ..utils.errors import ConfigError, require_positive
from ..utils.imaging import to_pil
from ..utils.loading import check_model_path, load_pretrained, require_layout
from ..utils.progress import progress_bar

logger = logging.getLogger(__name__)

MODES = ("cfg", "dns")


def dns_noise(eps_uncond: Tensor, eps_prompt: Tensor, guidance_scale: float) -> Tensor:
    """eps_DNS = e_p + s * (e_0 - e_p): guidance away from the prompt."""
    return eps_prompt + guidance_scale * (eps_uncond - eps_prompt)


def cfg_noise(eps_uncond: Tensor, eps_cond: Tensor, guidance_scale: float) -> Tensor:
    """eps_CFG = e_n + s * (e_p - e_n): ordinary classifier-free guidance."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    eta: float = 0.0  # DDIM eta

    def validate(self, prefix: str = "dns_") -> "SamplingSettings":
        if int(self.steps) < 1:
            raise ConfigError(prefix + "steps", self.steps, "must be >= 1")
        require_positive(prefix + "guidance_scale", self.guidance_scale)
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(prefix + "eta", self.eta, "must lie in [0, 1]")
        return self


class Captioner(Protocol):
    def caption(self, images: Tensor, progress: bool = False) -> List[str]:
        """Images [B, 3, H, W] in [0, 1] -> one caption each."""


class StableDiffusionSampler:
    """DDIM sampling on a Stable Diffusion backbone, in CFG or DNS mode."""
    def __init__(self, backbone) -> None:
        self.backbone = backbone
        # The backbone always returns epsilon (v-prediction models are converted).
        self.scheduler = DDIMScheduler.from_pretrained(
            backbone.model_path, subfolder="scheduler", prediction_type="epsilon")

    def guided_noise(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, mode: str,
                     guidance_scale: float) -> Tensor:
        """Both predictions in one batched call, combined by CFG or DNS."""
        if mode not in MODES:
            raise ConfigError("mode", mode, "unknown sampling mode", MODES)
        batch = x_t.shape[0]
        t_rows = t.reshape(-1).expand(2 * batch) if t.numel() == 1 else torch.cat([t, t])
        eps = self.backbone.predict_noise(torch.cat([x_t, x_t]), t_rows, torch.cat([uncond, cond]))
        eps_uncond, eps_cond = eps[:batch], eps[batch:]
        if mode == "dns":
            return dns_noise(eps_uncond, eps_cond, guidance_scale)
        return cfg_noise(eps_uncond, eps_cond, guidance_scale)

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor, settings: SamplingSettings, mode: str = "cfg",
               progress: bool = False) -> Tensor:
        """Images [B, 3, H, W] in [0, 1]; the same seed gives the same initial noise in every mode."""
        settings.validate()
        b = self.backbone
        batch = cond.shape[0]
        generator = torch.Generator().manual_seed(int(settings.seed))
        shape = (batch, b.unet.config.in_channels, b.latent_size, b.latent_size)
        latents = torch.randn(shape, generator=generator).to(b.device) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(int(settings.steps))
        bar = progress_bar(len(self.scheduler.timesteps), f"{mode.upper()} sampling", unit="step", enabled=progress)
        for t in self.scheduler.timesteps:
            model_input = self.scheduler.scale_model_input(latents, t)
            eps = self.guided_noise(model_input, t.to(b.device), cond, uncond, mode, settings.guidance_scale)
            latents = self.scheduler.step(eps, t, latents, eta=settings.eta).prev_sample
            bar.update()
        bar.close()
        return b.decode(latents)


@dataclass
class DNPResult:
    prompt: str
    negative_prompt: str  # n*
    image_path: str  # the DNS image (PNG)
    record_path: str  # JSON with the prompt, n* and the settings
    cache_hit: bool


def cached_dnp(
    prompt: str,
    model_name: str,
    settings: SamplingSettings,
    captioner_name: str,
    cache_dir: str,
    make_sampler: Callable[[], Tuple[StableDiffusionSampler, Callable[[List[str]], Tensor]]],
    make_captioner: Callable[[], Captioner],
    use_cache: bool = True,
    log: Callable[[str], None] = logger.info,
    progress: bool = True,
    variant: Optional[Mapping[str, Any]] = None,
) -> DNPResult:
    """Auto-DNP once per (model, prompt, sampling settings, captioner, ``variant``): sample the
    DNS image, caption it into n*, then save both (atomically; the image is written only with
    its record, so a failed captioning leaves nothing behind). A cache hit builds no model.
    ``variant``: whatever else the makers use that changes the image or n* (the caption length
    limit, the sampling precision); part of the cache key."""
    if not prompt or not prompt.strip():
        raise ConfigError("prompt", prompt, "must not be empty")
    settings.validate()
    key = cache_key(kind="dnp", model=model_name, prompt=prompt, settings=dataclasses.asdict(settings),
                    captioner=captioner_name, variant=dict(variant or {}))
    record_path = os.path.join(cache_dir, f"{key}.json")
    image_path = os.path.join(cache_dir, f"{key}.png")
    record = read_json(record_path) if use_cache else None
    if record is not None and os.path.exists(image_path):
        problem = dnp_record_problem(record, prompt, model_name, captioner_name) or image_problem(image_path)
        if problem is None:
            return DNPResult(prompt, record["negative_prompt"], image_path, record_path, True)
        invalid_content(record_path, problem)
    log(f"antijanus: DNS sampling of [{prompt}] with {model_name}: {settings.steps} DDIM steps, "
        f"guidance scale {settings.guidance_scale}, seed {settings.seed}")
    sampler, encode = make_sampler()
    embeddings = encode([prompt, ""])
    image = sampler.sample(embeddings[:1], embeddings[1:], settings, mode="dns", progress=progress)
    del sampler, encode
    log(f"antijanus: captioning the DNS image with {captioner_name}")
    negative = make_captioner().caption(image, progress=progress)[0].strip()
    atomic_write(image_path, lambda f: to_pil(image[0]).save(f, format="PNG"), binary=True)
    write_json(record_path, {"prompt": prompt, "negative_prompt": negative, "model": model_name,
                             "captioner": captioner_name, "settings": dataclasses.asdict(settings),
                             "variant": dict(variant or {})})
    return DNPResult(prompt, negative, image_path, record_path, False)


def dnp_record_problem(record: Mapping, prompt: str, model_name: str, captioner_name: str) -> Optional[str]:
    """Why a cached auto-DNP record cannot be used (n* missing or not a string, another prompt,
    model or captioner where the record names them), or None."""
    negative = record.get("negative_prompt")
    if not isinstance(negative, str):
        return "the key 'negative_prompt' is missing" if negative is None else "'negative_prompt' is not a string"
    for key, expected in (("prompt", prompt), ("model", model_name), ("captioner", captioner_name)):
        if key in record and record[key] != expected:
            return f"it was made for another {key} ({str(record[key])[:60]!r})"
    return None


def image_problem(path: str) -> Optional[str]:
    """Why the cached DNS image cannot be read as an image (truncated, garbage), or None."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # noqa: BLE001 (PIL raises many kinds for a damaged file)
        return f"its DNS image {os.path.basename(path)} is unreadable ({type(error).__name__})"
    return None


STABLE_DIFFUSION_LAYOUT = ("unet", "vae", "scheduler", "tokenizer", "text_encoder")


def load_sampler(model_name: str, device, half_precision: bool = True, key: str = "pretrained_model_name_or_path"):
    """A Stable Diffusion sampler and its prompt encoder, loaded from a hub id or a folder."""
    check_model_path(key, model_name)
    require_layout(key, model_name, "Stable Diffusion", STABLE_DIFFUSION_LAYOUT)
    options = BackboneOptions(pretrained_model_name_or_path=model_name, half_precision_weights=half_precision)
    backbone = load_pretrained(key, model_name, "Stable Diffusion model (for DNS sampling)",
                               lambda: StableDiffusionBackbone(options, device))
    sampler = load_pretrained(key, model_name, "Stable Diffusion model (its scheduler/)",
                              lambda: StableDiffusionSampler(backbone))
    return sampler, (lambda prompts: backbone.encode_prompts(prompts, keep_encoder=True))


def record_summary(result: DNPResult) -> Dict[str, str]:
    return {"prompt": result.prompt, "negative_prompt": result.negative_prompt,
            "dns_image": result.image_path, "record": result.record_path}
