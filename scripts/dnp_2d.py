#!/usr/bin/env python
"""Diffusion-negative prompting in 2D: for a prompt p, save side by side in one PNG grid

    1. the plain image (CFG with the empty negative prompt),
    2. the DNS image (guidance away from p, antijanus.prompting.dnp.dns_noise),
    3. n*: the DNS image's caption (auto-DNP), or your own with --negative,
    4. the image generated with (p, n*),

all from the same seed, plus a JSON with the prompts and settings.

    python scripts/dnp_2d.py "a DSLR photo of a corgi" --out outputs/dnp-corgi
    python scripts/dnp_2d.py "a DSLR photo of a corgi" --negative "blurry dark fur" --out outputs/dnp-corgi
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.prompting.captioning import DEFAULT_CAPTIONER, check_captioner, load_captioner  # noqa: E402
from antijanus.prompting.dnp import SamplingSettings, load_sampler  # noqa: E402
from antijanus.utils.imaging import image_grid, to_pil  # noqa: E402
from antijanus.utils.errors import ConfigError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", default="stabilityai/stable-diffusion-2-1-base", help="SD hub id or folder")
    parser.add_argument("--captioner", default=DEFAULT_CAPTIONER,
                        help="BLIP hub id or folder, or a captioner plugin folder (e.g. custom/janus_lab/models/captioner)")
    parser.add_argument("--negative", help="n* by hand (skips captioning)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scale", type=float, default=7.5, help="guidance scale (CFG and DNS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/dnp-2d")
    args = parser.parse_args()
    try:
        settings = SamplingSettings(steps=args.steps, guidance_scale=args.scale, seed=args.seed).validate("--")
        if args.negative is None:
            check_captioner(args.captioner, key="--captioner")  # before any sampling
        print(f"loading {args.model}")
        sampler, encode = load_sampler(args.model, torch.device(args.device),
                                       half_precision=args.device.startswith("cuda"), key="--model")
        p, empty = encode([args.prompt, ""]).split(1)
        print(f"sampling the plain and the DNS image ({args.steps} DDIM steps each)")
        plain = sampler.sample(p, empty, settings, mode="cfg", progress=True)
        dns = sampler.sample(p, empty, settings, mode="dns", progress=True)
        negative = args.negative
        if negative is None:
            print(f"captioning the DNS image with {args.captioner}")
            captioner = load_captioner(args.captioner, device=args.device, key="--captioner")
            negative = captioner.caption(dns, progress=True)[0]
        print(f"n* = {negative!r}; sampling with (p, n*)")
        n_star = encode([negative])
        with_dnp = sampler.sample(p, n_star, settings, mode="cfg", progress=True)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    image_grid([plain[0], dns[0], with_dnp[0]],
         [f"p: {args.prompt}", f"DNS image -> n*: {negative}", "(p, n*)"]).save(os.path.join(args.out, "dnp-grid.png"))
    for name, image in zip(("plain", "dns", "dnp"), (plain[0], dns[0], with_dnp[0])):
        to_pil(image).save(os.path.join(args.out, f"{name}.png"))
    with open(os.path.join(args.out, "dnp.json"), "w") as f:
        json.dump({"prompt": args.prompt, "negative_prompt": negative, "captioned": args.negative is None,
                   "model": args.model, "captioner": args.captioner, "steps": args.steps,
                   "guidance_scale": args.scale, "seed": args.seed}, f, indent=2)
    print(f"saved {os.path.join(args.out, 'dnp-grid.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
