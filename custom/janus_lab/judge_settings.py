"""The judge's training recipe (``JudgeSettings``): its data, augmentations and optimiser.

The defaults are the committed judge's recipe (saved in its judge.json); which judge version
used which setting: ``docs/model-history.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

from antijanus.utils.errors import ConfigError, require_probability
from antijanus.utils.imaging import check_lowres
from .world import IMAGE_SIZE


@dataclass(frozen=True)
class JudgeSettings:
    seed: int = 0
    threads: int = 2  # training is deterministic for a fixed thread count
    width: int = 24  # channels of the first stage (x2, x4 after)
    n_train: int = 30000  # rendered training images
    n_test: int = 4000  # held-out images (another seed)
    steps: int = 6000  # optimiser steps (training time: the judge's judge.json, timings)
    batch: int = 64
    lr: float = 2e-3
    # cameras: threestudio's training ranges (uniform azimuth, elevation -10..90)
    elevation_range: Tuple[float, float] = (-10.0, 90.0)
    distance_range: Tuple[float, float] = (1.2, 1.9)
    fovy_range: Tuple[float, float] = (45.0, 70.0)
    light_jitter: float = 45.0
    # creatures without their face or their tail (never both): the face / tail heads learn the
    # part itself, not the pose that usually shows it (a faceless blob is not a face)
    p_faceless: float = 0.35
    p_tailless: float = 0.15
    # scrambled negatives: the creature (its silhouette, as rendered) shuffled in patches or
    # refilled with smooth colour noise, with no attribute visible (view / kind / camera not
    # trained on them), so that a face means the face's structure, not the colours that make
    # one. Patch side 1 (a pixel shuffle) is the face_scrambled control's transform
    # (``images.scramble_object_pixels``): left out, so that the control stays held out.
    p_scrambled: float = 0.2
    scramble_patches: Tuple[int, ...] = (2, 4)  # patch sides (pixels) of the patch shuffle
    p_noise_fill: float = 1.0 / 3.0  # share of the negatives refilled with noise (the rest patch-shuffled)
    scramble_noise_sigma: float = 2.0  # the noise refill is blurred with sigma uniform in [0, this]
    # augmentations
    blur_sigma: float = 0.8  # Gaussian blur, sigma uniform in [0, blur_sigma] pixels
    noise_std: float = 0.05  # pixel noise, std uniform in [0, noise_std]
    colour_jitter: float = 0.15  # brightness / contrast / saturation factors 1 +- this
    scale_jitter: float = 0.15  # zoom 1 +- this
    shift_jitter: float = 2.0  # pixels
    p_augment: float = 0.6
    # low effective resolution: a share of the training images is shrunk (antialiased) to a side
    # drawn from ``lowres_sides`` and enlarged back (bilinear), what a 3D run's orbit is (16x16
    # latents decoded, small objects)
    p_lowres: float = 0.3
    lowres_sides: Tuple[int, int] = (10, 20)  # the smallest and largest side, pixels (inclusive)

    def __post_init__(self) -> None:
        for key in ("p_faceless", "p_tailless", "p_scrambled", "p_noise_fill"):
            require_probability(key, getattr(self, key))
        if self.p_faceless + self.p_tailless > 1.0:
            raise ConfigError("p_tailless", self.p_tailless,
                              f"p_faceless + p_tailless must be <= 1 (a creature lacks at most one; p_faceless {self.p_faceless})")
        sides = [p for p in range(1, IMAGE_SIZE + 1) if IMAGE_SIZE % p == 0]
        if not self.scramble_patches or any(isinstance(p, bool) or p not in sides for p in self.scramble_patches):
            raise ConfigError("scramble_patches", self.scramble_patches,
                              f"patch sides that divide the {IMAGE_SIZE}-pixel image", sides)
        if self.scramble_noise_sigma < 0:
            raise ConfigError("scramble_noise_sigma", self.scramble_noise_sigma, "a blur sigma >= 0 (pixels)")
        check_lowres("p_lowres", self.p_lowres, "lowres_sides", self.lowres_sides, largest=IMAGE_SIZE)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
