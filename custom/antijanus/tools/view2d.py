"""2D view-conditioning experiment after Perp-Neg (Armandpour et al. 2023) Table 1.

For each prompt p and requested view v, sample with the positive "p, <v> view" and the view
negatives of the paper's Sec. 4.2 (back -> [side, front], side -> [front], front -> [side]),
with three samplers on the same seeds:

    vanilla:  eps_unc + s * e_pos                                   (negatives ignored)
    cebm:     eps_unc + s * (e_pos - sum_i w_i e_i)                 (composable negation)
    perp-neg: eps_unc + s * (e_pos - sum_i w_i e_i_perp)            (Perp-Neg)

then classify each image's view with CLIP zero-shot (the view phrases), or any view classifier
(``metrics.ViewClassifier``), among ``answers`` (default: front, side, back; a classifier that
knows more regions, e.g. the lab judge's "overhead", may be given them all), and report the success
rate per method and view. ``batch_size`` samples that many seeds in one batch (each image's initial
noise still comes from its own seed). ``interpolation_images`` renders the front -> side -> back
sweep of the Perp-Neg view interpolation (positive embedding mix and weight functions of views.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..prompting.dnp import SamplingSettings, StableDiffusionSampler
from ..utils.errors import ConfigError, require_non_negative
from ..core.perp_neg import composable_noise, perp_neg_noise
from ..utils.progress import progress_bar
from ..core.views import BACK, FRONT, SIDE, PerpNegWeights, plan_perp_neg

METHODS = ("vanilla", "cebm", "perp-neg")
VIEW_NEGATIVES = {"front": ("side",), "side": ("front",), "back": ("side", "front")}  # Perp-Neg Sec. 4.2


@dataclass
class ViewExperiment:
    prompts: Sequence[str]
    views: Sequence[str] = ("front", "side", "back")
    methods: Sequence[str] = METHODS
    seeds: Sequence[int] = (0, 1, 2, 3)
    negative_weight: float = 1.0
    phrases: Mapping[str, str] = field(default_factory=lambda: {"front": "front view", "side": "side view",
                                                                 "back": "back view"})
    settings: SamplingSettings = SamplingSettings(steps=50, guidance_scale=7.5)
    answers: Sequence[str] = ("front", "side", "back")  # the views an image may be classified as
    batch_size: int = 1  # seeds sampled together (the same images as one at a time)

    def validate(self) -> "ViewExperiment":
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ConfigError("prompts", list(self.prompts), "needs at least one non-empty prompt")
        for view in self.views:
            if view not in VIEW_NEGATIVES:
                raise ConfigError("views", view, "unknown view name", tuple(VIEW_NEGATIVES))
        for method in self.methods:
            if method not in METHODS:
                raise ConfigError("methods", method, "unknown method", METHODS)
        require_non_negative("negative_weight", self.negative_weight)
        missing = [v for v in self.views if v not in self.answers]
        if missing or len(set(self.answers)) != len(self.answers):
            raise ConfigError("answers", list(self.answers), "must list each requested view once "
                              f"(requested: {list(self.views)})")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("batch_size", self.batch_size, "must be an integer >= 1")
        self.settings.validate("")
        return self


def view_prompt(prompt: str, phrase: str) -> str:
    return f"{prompt}, {phrase}"


@torch.no_grad()
def sample_with_negatives(sampler: StableDiffusionSampler, positive: Tensor, uncond: Tensor,
                          negatives: Tensor, weights: Sequence[float], method: str,
                          settings: SamplingSettings, seeds: Optional[Sequence[int]] = None) -> Tensor:
    """Images [B, 3, H, W]: DDIM with every row (uncond, positive, negatives) of every image in one
    UNet call per step, combined by ``method``. One image from ``settings.seed``, or one per seed
    of ``seeds`` (each from its own seed's initial noise: the images of one-seed calls)."""
    b = sampler.backbone
    seeds = [int(settings.seed)] if seeds is None else [int(s) for s in seeds]
    shape = (1, b.unet.config.in_channels, b.latent_size, b.latent_size)
    latents = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    latents = latents.to(b.device) * sampler.scheduler.init_noise_sigma
    B = len(seeds)
    n_neg = negatives.shape[0] if method != "vanilla" else 0
    rows = torch.cat([uncond.expand(B, -1, -1), positive.expand(B, -1, -1), negatives[:n_neg].repeat(B, 1, 1)])
    index = torch.arange(B, device=b.device).repeat_interleave(n_neg)  # negatives of image b: rows b*n_neg...
    weight = torch.tensor(list(weights)[:n_neg], dtype=torch.float32, device=b.device).repeat(B)
    sampler.scheduler.set_timesteps(int(settings.steps))
    for t in sampler.scheduler.timesteps:
        model_input = sampler.scheduler.scale_model_input(latents, t)
        x = torch.cat([model_input, model_input, model_input.repeat_interleave(n_neg, dim=0)])
        eps = b.predict_noise(x, t.reshape(1).expand(rows.shape[0]).to(b.device), rows)
        unc, pos, neg = eps[:B], eps[B:2 * B], eps[2 * B:]
        if method == "perp-neg":
            guided, _ = perp_neg_noise(unc, pos, neg, index, weight, settings.guidance_scale)
        else:  # cebm; vanilla has no negative rows, where both forms are plain CFG
            guided = composable_noise(unc, pos, neg, index, weight, settings.guidance_scale)
        latents = sampler.scheduler.step(guided, t, latents, eta=settings.eta).prev_sample
    return b.decode(latents)


def predict_views(classify, images: Tensor, prompt: str, views: Sequence[str], phrases: Mapping[str, str]) -> List[str]:
    """The view each image shows, by ``classify``: a view classifier (``view_scores(images,
    prompt, views)``, see metrics.ViewClassifier) or a similarity function ``(images, texts) ->
    [N, T]`` (e.g. metrics.CLIPScorer.similarity) scored against the view phrases alone."""
    if hasattr(classify, "view_scores"):
        scores = classify.view_scores(images, prompt, list(views))
    else:
        missing = [v for v in views if v not in phrases]
        if missing:
            raise ConfigError("phrases", dict(phrases), f"needs a phrase for every answer view; missing {missing}")
        scores = classify(images, [phrases[v] for v in views])
    return [views[i] for i in scores.argmax(dim=1).tolist()]


def run_view_experiment(sampler: StableDiffusionSampler, classify, experiment: ViewExperiment,
                        progress: bool = True) -> Dict:
    """Images, predicted views and the success table. ``classify``: a view classifier or a CLIP
    similarity function (``predict_views``)."""
    experiment.validate()
    encode = lambda texts: sampler.backbone.encode_prompts(list(texts), keep_encoder=True)  # noqa: E731
    uncond = encode([""])
    records = []
    jobs = [(p, v, m, s) for p in experiment.prompts for v in experiment.views
            for m in experiment.methods for s in experiment.seeds]
    bar = progress_bar(len(jobs), "2D view experiment", "image", progress)
    for prompt in experiment.prompts:
        names = list(VIEW_NEGATIVES)  # every view is a positive or some view's negative
        embs = encode([view_prompt(prompt, experiment.phrases[v]) for v in names])
        view_embs = {v: embs[i:i + 1] for i, v in enumerate(names)}
        for view in experiment.views:
            negatives = torch.cat([view_embs[n] for n in VIEW_NEGATIVES[view]])
            weights = [experiment.negative_weight] * negatives.shape[0]
            for method in experiment.methods:
                seeds = list(experiment.seeds)
                for start in range(0, len(seeds), experiment.batch_size):
                    chunk = seeds[start:start + experiment.batch_size]
                    images = sample_with_negatives(sampler, view_embs[view], uncond, negatives, weights, method,
                                                   experiment.settings, seeds=chunk)
                    for seed, image in zip(chunk, images):
                        records.append({"prompt": prompt, "view": view, "method": method, "seed": seed, "image": image})
                    bar.update(len(chunk))
    bar.close()
    for prompt in experiment.prompts:  # every view is a possible answer
        chosen = [r for r in records if r["prompt"] == prompt]
        images = torch.stack([r["image"] for r in chosen])
        for record, view in zip(chosen, predict_views(classify, images, prompt, list(experiment.answers),
                                                      experiment.phrases)):
            record["predicted"] = view
    table = {m: {v: _rate(records, m, v) for v in experiment.views} for m in experiment.methods}
    return {"records": records, "success": table}


def _rate(records, method, view) -> float:
    chosen = [r for r in records if r["method"] == method and r["view"] == view]
    return sum(r["predicted"] == view for r in chosen) / len(chosen) if chosen else float("nan")


def format_success_table(table: Mapping[str, Mapping[str, float]]) -> str:
    views = list(next(iter(table.values())))
    lines = ["| method | " + " | ".join(f"{v} view" for v in views) + " |",
             "| --- | " + " | ".join("---" for _ in views) + " |"]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{100 * row[v]:.1f} %" for v in views) + " |")
    return "\n".join(lines)


@torch.no_grad()
def interpolation_images(sampler: StableDiffusionSampler, prompt: str, weights: PerpNegWeights,
                         azimuths: Sequence[float], settings: SamplingSettings,
                         phrases: Mapping[str, str]) -> Tensor:
    """Perp-Neg view interpolation front (0) -> side (90) -> back (180): at each azimuth the
    positive is the interpolated embedding and the negatives follow the weight functions."""
    encode = lambda texts: sampler.backbone.encode_prompts(list(texts), keep_encoder=True)  # noqa: E731
    embs = encode([view_prompt(prompt, phrases[v]) for v in ("front", "side", "back")])
    view_embs = {FRONT: embs[0], SIDE: embs[1], BACK: embs[2]}
    uncond = encode([""])
    azimuth = torch.tensor([float(a) for a in azimuths])
    plan = plan_perp_neg(azimuth, torch.zeros_like(azimuth, dtype=torch.bool), weights)
    images = []
    for i in range(len(azimuths)):
        positive = sum(float(plan.positive_mix[i, v]) * view_embs[v] for v in view_embs)[None]
        used = [v for v in view_embs if plan.negative_weight[i, v] > 0 and plan.positive_mix[i, v] < 1]
        negatives = torch.stack([view_embs[v] for v in used]) if used else positive[:0]
        images.append(sample_with_negatives(sampler, positive, uncond, negatives,
                                            [float(plan.negative_weight[i, v]) for v in used],
                                            "perp-neg", settings)[0])
    return torch.stack(images)
