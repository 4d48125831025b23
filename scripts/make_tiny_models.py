#!/usr/bin/env python
"""Write random-weight model folders in the real layouts, for CPU integration runs and tests:

    OUT/sd      Stable Diffusion (unet/, vae/, scheduler/, tokenizer/, text_encoder/)
    OUT/if      DeepFloyd IF stage I (unet/, scheduler/, tokenizer/, text_encoder/ T5)
    OUT/bert    BertForMaskedLM with an uncased WordPiece vocabulary
    OUT/blip    BLIP image captioning
    OUT/clip    CLIP (CLIPModel + CLIPProcessor, the layout of openai/clip-vit-base-patch32)

    python scripts/make_tiny_models.py /tmp/antijanus-models            # tiny, seconds
    python scripts/make_tiny_models.py /tmp/full --size sd21 --only sd  # full-size SD 2.1 layout

Pass the folders as pretrained_model_name_or_path (sd, if), debias_model (bert), captioner (blip),
and to the metrics, the 2D experiment and the sweep's metrics block as the CLIP model
(`--clip OUT/clip`, `clip_model: OUT/clip`; with `--random-lpips` / `random_lpips: true` they need
no LPIPS weight files). Random weights: only the mechanics run, the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.testing.tiny_models import (  # noqa: E402
    make_bert, make_blip, make_clip, make_deepfloyd_if, make_stable_diffusion,
)

MODELS = ("sd", "if", "bert", "blip", "clip")
BERT_WORDS = ("this image is depicting a view of front side back top over ##head corgi dog cat "
              "smiling wearing crown hat red photo dslr beach").split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--size", choices=["tiny", "sd21"], default="tiny", help="Stable Diffusion size")
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    builders = {
        "sd": lambda path: make_stable_diffusion(path, size=args.size),
        "if": make_deepfloyd_if,
        "bert": lambda path: make_bert(path, BERT_WORDS),
        "blip": make_blip,
        "clip": make_clip,
    }
    for name in args.only:
        path = os.path.join(args.out, name)
        builders[name](path)
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
