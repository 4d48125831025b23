"""The judge's training recipe (``JudgeSettings``): its data, augmentations and optimiser.

The defaults are the committed judge's recipe (saved in its judge.json); which judge version
used which setting: ``docs/model-history.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

from antijanus.utils.errors import ConfigError, require_finite, require_non_negative, require_probability
from antijanus.utils.imaging import check_lowres
from .world import IMAGE_SIZE

LATENT_SIZE = IMAGE_SIZE // 2  # the prior's VAE downsamples once (prior.py)


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
    # --- judge v9 (issue 30: training images that look like score distillation's output, ground
    # truth from the world; every key at 0 gives v8's training data exactly)
    # the training set's extra creatures (``render_labelled(training=True)``; held-out sets keep
    # the world's): plain bodies with no face, no tail, no smile / stripes / hat (a faceless blob,
    # the kind kept), a share of all creatures drawn on its own (it overrides p_faceless /
    # p_tailless, so no sum constraint: at p_faceless 0.35, p_tailless 0.15, p_partless 0.1 the
    # training set has 41.5 % without a face, 13.5 % without only the tail, 10 % with no part)
    p_partless: float = 0.1
    # partial faces: a share of the creatures that have a face get their front decals (face,
    # pupils, mouth) cut by a random half-plane (half of them) or shrunk (scale uniform in
    # [partial_face_min_scale, 1]); "face visible" stays the renderer's rule (>= 2 output pixels)
    p_partial_face: float = 0.15
    partial_face_min_scale: float = 0.5
    # round trips through the committed prior's VAE (encode -> posterior mean -> decode, fp32,
    # computed once with the training data): a share of the white-background training renders
    # (half of them have one; the VAE pales other backgrounds and the object with them), and of those a share
    # p_latent_degrade with the latents degraded as a latent volume render degrades them (all four,
    # each magnitude uniform in [0, the key]): a mix towards the object's mean latent
    # (latent_mean_mix), a down-and-up sampling to a side uniform in latent_lowres_sides (16: none),
    # a Gaussian blur (latent_blur_sigma, latent pixels) and Gaussian noise (latent_noise_std,
    # latent units; the latents' std is 1-2)
    p_vae_roundtrip: float = 0.6
    p_latent_degrade: float = 0.5
    latent_mean_mix: float = 0.4
    latent_lowres_sides: Tuple[int, int] = (10, 16)
    latent_blur_sigma: float = 0.7
    latent_noise_std: float = 0.15
    # colour drift on the object (its rendered silhouette), every training batch: per image and
    # channel a gain 1 + u and an offset u / 2, u uniform in [-colour_drift, colour_drift]
    colour_drift: float = 0.2
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
        for key in ("p_faceless", "p_tailless", "p_scrambled", "p_noise_fill", "p_partless", "p_partial_face",
                    "p_vae_roundtrip", "p_latent_degrade", "latent_mean_mix"):
            require_probability(key, getattr(self, key))
        if self.p_faceless + self.p_tailless > 1.0:
            raise ConfigError("p_tailless", self.p_tailless,
                              f"p_faceless + p_tailless must be <= 1 (a creature lacks at most one; p_faceless {self.p_faceless})")
        self._check_v9_magnitudes()
        sides = [p for p in range(1, IMAGE_SIZE + 1) if IMAGE_SIZE % p == 0]
        if not self.scramble_patches or any(isinstance(p, bool) or p not in sides for p in self.scramble_patches):
            raise ConfigError("scramble_patches", self.scramble_patches,
                              f"patch sides that divide the {IMAGE_SIZE}-pixel image", sides)
        if self.scramble_noise_sigma < 0:
            raise ConfigError("scramble_noise_sigma", self.scramble_noise_sigma, "a blur sigma >= 0 (pixels)")
        check_lowres("p_lowres", self.p_lowres, "lowres_sides", self.lowres_sides, largest=IMAGE_SIZE)

    def _check_v9_magnitudes(self) -> None:
        for key, high in (("latent_blur_sigma", None), ("latent_noise_std", None), ("colour_drift", 1.0)):
            value = require_finite(key, getattr(self, key))
            require_non_negative(key, value)
            if high is not None and value > high:
                raise ConfigError(key, value, f"must be <= {high}")
        scale = require_finite("partial_face_min_scale", self.partial_face_min_scale)
        if not 0.0 < scale <= 1.0:
            raise ConfigError("partial_face_min_scale", scale, "a face scale in (0, 1]")
        check_lowres("p_latent_degrade", self.p_latent_degrade, "latent_lowres_sides", self.latent_lowres_sides,
                     largest=LATENT_SIZE)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
