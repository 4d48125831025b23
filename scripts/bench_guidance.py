#!/usr/bin/env python
"""Time one Perp-Neg SDS step against plain SDS with the same UNet, in the same run.

For each batch size it prints ms/step (forward + backward), the UNet's share of it and the rest
("other": conditioning, Perp-Neg combination, SDS, VAE), peak GPU memory, the UNet rows each
evaluates per step, and the ratio Perp-Neg / plain next to the ratio of rows. The target: the
time ratio of the UNet-only step (latents in, no VAE) equals the row ratio, i.e. Perp-Neg costs
nothing beyond its extra rows ("other" stays the same). The full step (VAE encode) is shown too.
With the tiny CPU model the UNet's fixed per-call cost dominates, so the time ratio sits below
the row ratio; a full-size UNet shows the real ratio. Last, the time of one VAE decode of the
step's latents: threestudio's SDS step pays it on every step (it decodes the one-step estimate
whether or not anything uses it); ours only with ``use_img_loss`` or ``guidance_eval``.

    python scripts/bench_guidance.py                       # CPU, tiny random UNet
    python scripts/bench_guidance.py --size sd21 --device cuda --half   # full-size SD 2.1 layout
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.backbones import StableDiffusionBackbone, BackboneOptions  # noqa: E402
from antijanus.core.guidance import ScoreDistillationConfig, ScoreDistillationGuidance  # noqa: E402
from antijanus.testing.tiny_models import make_stable_diffusion  # noqa: E402
from antijanus.core.views import VIEWS, ViewRanges, classify_views  # noqa: E402


class Direction:
    def __init__(self, name, ranges):
        self.name = name
        self.index = VIEWS.index(name)
        self.ranges = ranges

    def condition(self, elevation, azimuth, distance):
        return classify_views(elevation, azimuth, self.ranges) == self.index


class PromptOutput:
    """threestudio PromptProcessorOutput attributes, with random embeddings."""

    def __init__(self, features: int, device, dtype):
        ranges = ViewRanges()
        self.directions = [Direction(name, ranges) for name in VIEWS]
        self.direction2idx = {name: i for i, name in enumerate(VIEWS)}
        g = torch.Generator().manual_seed(0)
        self.text_embeddings_vd = torch.randn(4, 77, features, generator=g).to(device, dtype)
        self.uncond_text_embeddings_vd = torch.randn(1, 77, features, generator=g).to(device, dtype).expand(4, -1, -1)
        self.text_embeddings = self.text_embeddings_vd[:1]
        self.uncond_text_embeddings = self.uncond_text_embeddings_vd[:1]


def cameras(batch: int, steps: int, device):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        yield dict(
            elevation=(torch.rand(batch, generator=g) * 55 - 10).to(device),
            azimuth=(torch.rand(batch, generator=g) * 360 - 180).to(device),
            camera_distances=torch.full((batch,), 2.0, device=device),
        )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UNetTimer:
    """Wraps backbone.predict_noise to time the UNet alone (synchronised)."""

    def __init__(self, backbone, device):
        self.predict, self.device, self.seconds = backbone.predict_noise, device, 0.0
        backbone.predict_noise = self

    def __call__(self, *args):
        sync(self.device)
        start = time.perf_counter()
        out = self.predict(*args)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


def time_steps(guidance, prompts, batch, steps, latents_only, device, image_size, timer):
    latent = guidance.backbone.latent_size
    shape = (batch, latent, latent, 4) if latents_only else (batch, image_size, image_size, 3)
    times, rows, unet = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i, cams in enumerate(cameras(batch, steps + 2, device)):
        rgb = torch.rand(shape, device=device, requires_grad=True)
        sync(device)
        timer.seconds = 0.0
        start = time.perf_counter()
        out = guidance(rgb, prompts, **cams, rgb_as_latents=latents_only)
        out["loss_sds"].backward()
        sync(device)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
            unet.append(timer.seconds)
            rows.append(out["unet_rows"])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(times) * 1e3, statistics.median(unet) * 1e3, statistics.mean(rows), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "sd21"], default="tiny")
    parser.add_argument("--model", help="existing SD folder (default: build random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--half", action="store_true", help="fp16 weights (as threestudio's default)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); use --device cpu")
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or make_stable_diffusion(tmp, size=args.size, with_text_encoder=False)
        options = BackboneOptions(pretrained_model_name_or_path=folder,
                                         half_precision_weights=args.half)
        backbone = StableDiffusionBackbone(options, device)
        timer = UNetTimer(backbone, device)
        features = backbone.unet.config.cross_attention_dim
        prompts = PromptOutput(features, device, backbone.dtype)
        modes = {
            "perp-neg": ScoreDistillationGuidance(ScoreDistillationConfig(perp_neg=True), device, backbone),
            "plain": ScoreDistillationGuidance(ScoreDistillationConfig(perp_neg=False), device, backbone),
        }
        print(f"device={device} size={args.size} half={args.half} steps={args.steps} "
              f"image={backbone.image_size} latent={backbone.latent_size}")
        header = (f"{'step':<10}{'B':>3}{'mode':>10}{'ms/step':>10}{'unet ms':>9}{'other ms':>9}"
                  f"{'rows':>7}{'peak MiB':>10}")
        print(header + f"{'time ratio':>12}{'row ratio':>11}")
        for latents_only in (True, False):
            label = "unet-only" if latents_only else "full"
            for batch in args.batch_sizes:
                results = {name: time_steps(g, prompts, batch, args.steps, latents_only, device,
                                            backbone.image_size, timer) for name, g in modes.items()}
                for name, (ms, unet_ms, rows, peak) in results.items():
                    line = (f"{label:<10}{batch:>3}{name:>10}{ms:>10.2f}{unet_ms:>9.2f}"
                            f"{ms - unet_ms:>9.2f}{rows:>7.2f}{peak:>10.1f}")
                    if name == "perp-neg":
                        base_ms, _, base_rows, _ = results["plain"]
                        line += f"{ms / base_ms:>12.2f}{rows / base_rows:>11.2f}"
                    print(line)
        for batch in args.batch_sizes:
            ms = time_decode(backbone, batch, args.steps, device)
            print(f"{'vae decode':<10}{batch:>3}{'':>10}{ms:>10.2f}   (threestudio: every SDS step; ours: "
                  "only for use_img_loss / guidance_eval)")


@torch.no_grad()
def time_decode(backbone, batch: int, steps: int, device) -> float:
    """Median ms of decoding a batch of latents at the model's size (threestudio's decode_latents)."""
    latents = torch.randn(batch, 4, backbone.latent_size, backbone.latent_size, device=device)
    times = []
    for i in range(steps + 2):
        sync(device)
        start = time.perf_counter()
        backbone.decode_latents(latents)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


if __name__ == "__main__":
    main()
