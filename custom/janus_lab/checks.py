"""Checks that the lab prior has the biases it should and is good enough to be meaningful.

Images are sampled with our DDIM sampler (``antijanus.prompting.dnp``: classifier-free guidance,
the empty prompt as the unconditional) and judged by the lab judge:

* bias: on prompts without a view phrase ("a bear"), the share of images judged "front",
  next to the share of front cameras in a 3D run (threestudio's uniform azimuth: 90 of 360
  degrees) and the share of front views in the training data;
* steerability: per view, the share of images judged to be that view with its phrase
  ("a bear, back view") and without;
* quality: the share of images judged to be the prompted kind, and whether faces are drawn:
  the share of images judged "front" in which the judge sees the face, and for "a smiling
  <kind>" the share judged "front" (the word's pull towards the front that D-SDS targets) and,
  among those, the share in which the judge sees the smile.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from antijanus.prompting.dnp import SamplingSettings, load_sampler
from .data import VIEW_PHRASES, WorldBias, caption_for, make_samples, statistics
from .judge import Judge
from .model_files import sha256
from .stats import wilson
from .world import ATTRIBUTES, KINDS, VIEWS

FRONT_CAMERA_SHARE = 90.0 / 360.0  # threestudio's uniform azimuth: |azimuth| < 45 degrees
FRONT = VIEWS.index("front")


@dataclass(frozen=True)
class CheckSettings:
    n_per_prompt: int = 32  # images per prompt (one batch, seeds fixed per batch)
    steps: int = 30  # DDIM steps
    guidance_scale: float = 7.5
    seed: int = 0  # the same initial noise for every prompt


def check_prompts(kinds: Sequence[str] = KINDS) -> List[Tuple[str, str, Optional[str]]]:
    """(prompt, kind, requested view or None): each kind plain and with each view phrase."""
    prompts = []
    for kind in kinds:
        prompts.append((f"a {kind}", kind, None))
        for view in VIEWS:
            for phrase in VIEW_PHRASES[view]:
                prompts.append((f"a {kind}, {phrase}", kind, view))
    return prompts


def attribute_prompts(kinds: Sequence[str] = KINDS, attributes: Sequence[str] = ("smiling",)
                      ) -> List[Tuple[str, str, str]]:
    """(prompt, kind, attribute) without a view phrase: 'a smiling bear'."""
    return [(caption_for(kind, [a]), kind, a) for a in attributes for kind in kinds]


def sample(sampler, encode, prompts, settings: CheckSettings, log=print) -> Dict[str, Tensor]:
    """n images per prompt with our DDIM sampler (CFG, "" as the unconditional), the same
    initial noise for every prompt."""
    sampling = SamplingSettings(steps=settings.steps, guidance_scale=settings.guidance_scale, seed=settings.seed)
    uncond = encode([""]).expand(settings.n_per_prompt, -1, -1)
    images = {}
    for prompt, _, _ in prompts:
        cond = encode([prompt]).expand(settings.n_per_prompt, -1, -1)
        images[prompt] = sampler.sample(cond, uncond, sampling)
        log(f"  sampled {prompt!r}")
    return images


def judge_samples(judge, images: Dict[str, Tensor], prompts, log=print, attribute_prompts=()):
    """Judge the samples of ``prompts`` ((prompt, kind, view)) and of ``attribute_prompts``
    ((prompt, kind, attribute), no view phrase)."""
    results = []
    rows = [(p, k, v, None) for p, k, v in prompts] + [(p, k, None, a) for p, k, a in attribute_prompts]
    for prompt, kind, view, attribute in rows:
        verdict = judge(images[prompt])
        results.append({"prompt": prompt, "kind": kind, "view": view, "attribute": attribute, "images": images[prompt],
                        "judged_view": verdict["view"], "judged_kind": verdict["kind"],
                        "judged_attributes": verdict["attributes"]})
        log(f"  {prompt!r}: judged " + " ".join(f"{v} {int((verdict['view'] == i).sum())}" for i, v in enumerate(VIEWS))
            + f", kind right {int((verdict['kind'] == KINDS.index(kind)).sum())}/{len(verdict['kind'])}")
    return results


def summarise_checks(results, data_front_share: Optional[float] = None) -> Dict[str, object]:
    """The check's figures from judged samples (``judge_samples``): the bias without a view
    phrase, steerability per view, kind accuracy, faces drawn, and per attribute prompt."""
    plain = [r for r in results if r["view"] is None and r.get("attribute") is None]
    figures = no_phrase_figures(plain, data_front_share)
    figures["steerability"] = steerability(results, figures["no_phrase_view_share"])
    n_all = sum(len(r["judged_kind"]) for r in results)
    right = sum(int((r["judged_kind"] == KINDS.index(r["kind"])).sum()) for r in results)
    figures["kind_accuracy"] = right / n_all
    figures["kind_accuracy_ci95"] = wilson(right, n_all)
    figures["n_images"] = n_all
    figures["no_phrase_views_per_kind"] = {
        k: {v: sum(int((r["judged_view"] == i).sum()) for r in plain if r["kind"] == k) for i, v in enumerate(VIEWS)}
        for k in KINDS if any(r["kind"] == k for r in plain)}
    figures.update(face_figures(results))
    for attribute in sorted({r["attribute"] for r in results if r.get("attribute")}):
        figures[f"prompt_{attribute}"] = attribute_prompt_figures([r for r in results if r.get("attribute") == attribute],
                                                                  attribute)
    return figures


def no_phrase_figures(plain, data_front_share: Optional[float]) -> Dict[str, object]:
    """The bias: the share judged "front" among the samples of prompts without a view phrase
    (with its Wilson interval) beside the front cameras' share in a 3D run, and every view's share."""
    n_plain = sum(len(r["judged_view"]) for r in plain)
    front_plain = sum(int((r["judged_view"] == FRONT).sum()) for r in plain)
    return {
        "front_share_no_phrase": front_plain / n_plain,
        "front_share_no_phrase_ci95": wilson(front_plain, n_plain),
        "front_camera_share": FRONT_CAMERA_SHARE,
        "data_front_share": data_front_share,
        "no_phrase_view_share": {v: sum(int((r["judged_view"] == i).sum()) for r in plain) / n_plain
                                 for i, v in enumerate(VIEWS)},
    }


def steerability(results, without_phrase: Dict[str, float]) -> Dict[str, Dict[str, object]]:
    """Per view: the share judged that view among the samples whose prompt asks for it (overall,
    with its Wilson interval, and per phrase), beside the share ``without_phrase``."""
    steer = {}
    for i, v in enumerate(VIEWS):
        asked = [r for r in results if r["view"] == v]
        n = sum(len(r["judged_view"]) for r in asked)
        hits = sum(int((r["judged_view"] == i).sum()) for r in asked)
        steer[v] = {"with_phrase": hits / n, "with_phrase_ci95": wilson(hits, n),
                    "without_phrase": without_phrase[v], "n": n}
        for phrase in VIEW_PHRASES[v]:
            rows = [r for r in asked if r["prompt"].endswith(phrase)]
            m = sum(len(r["judged_view"]) for r in rows)
            steer[v][phrase] = sum(int((r["judged_view"] == i).sum()) for r in rows) / m
    return steer


def face_figures(results) -> Dict[str, object]:
    """Faces drawn: the share of the images judged "front" in which the judge sees the face."""
    face = ATTRIBUTES.index("face")
    judged_front = torch.cat([r["judged_view"] == FRONT for r in results])
    face_seen = torch.cat([r["judged_attributes"][:, face] for r in results])
    n_front, n_face = int(judged_front.sum()), int((judged_front & face_seen).sum())
    return {"face_given_judged_front": n_face / n_front if n_front else float("nan"),
            "face_given_judged_front_ci95": wilson(n_face, n_front), "n_judged_front": n_front}


def attribute_prompt_figures(rows, attribute: str) -> Dict[str, object]:
    """For the samples of 'a <attribute> <kind>' (no view phrase): the share judged "front", the
    share of those showing the attribute, and every view's share."""
    n = sum(len(r["judged_view"]) for r in rows)
    fronts = torch.cat([r["judged_view"] == FRONT for r in rows])
    shown = torch.cat([r["judged_attributes"][:, ATTRIBUTES.index(attribute)] for r in rows])
    n_fronts, n_shown = int(fronts.sum()), int((fronts & shown).sum())
    return {"front_share": n_fronts / n, "front_share_ci95": wilson(n_fronts, n), "n": n,
            "shown_given_judged_front": n_shown / n_fronts if n_fronts else float("nan"),
            "shown_given_judged_front_ci95": wilson(n_shown, n_fronts),
            "view_share": {v: int((torch.cat([r["judged_view"] for r in rows]) == i).sum()) / n
                           for i, v in enumerate(VIEWS)}}


def format_figures(figures: Dict[str, object]) -> str:
    lo, hi = figures["front_share_no_phrase_ci95"]
    lines = [
        f"bias: judged 'front' without a view phrase {figures['front_share_no_phrase']:.3f} "
        f"(95% CI {lo:.3f}-{hi:.3f}); front cameras in a 3D run {figures['front_camera_share']:.3f}"
        + (f"; front views in the training data {figures['data_front_share']:.3f}" if figures.get("data_front_share") else ""),
        "no-phrase view shares: " + "  ".join(f"{v} {p:.3f}" for v, p in figures["no_phrase_view_share"].items()),
        "steerability (share judged as the requested view):",
    ]
    for v, row in figures["steerability"].items():
        lo, hi = row["with_phrase_ci95"]
        per_phrase = ", ".join(f"'{p}' {row[p]:.3f}" for p in VIEW_PHRASES[v])
        lines.append(f"  {v:<9} with phrase {row['with_phrase']:.3f} (95% CI {lo:.3f}-{hi:.3f}; {per_phrase})"
                     f"   without {row['without_phrase']:.3f}")
    lo, hi = figures["kind_accuracy_ci95"]
    lines.append(f"kind accuracy (judged kind = prompted kind): {figures['kind_accuracy']:.3f} "
                 f"(95% CI {lo:.3f}-{hi:.3f}) over {figures['n_images']} images")
    if "no_phrase_views_per_kind" in figures:
        lines.append("no-phrase judged views per kind: " + "; ".join(
            f"{k} " + " ".join(f"{v} {c}" for v, c in row.items()) for k, row in figures["no_phrase_views_per_kind"].items()))
    if "face_given_judged_front" in figures:
        lo, hi = figures["face_given_judged_front_ci95"]
        lines.append(f"faces: the judge sees the face in {figures['face_given_judged_front']:.3f} (95% CI {lo:.3f}-{hi:.3f}) "
                     f"of the {figures['n_judged_front']} images it judges 'front'")
    for key in sorted(k for k in figures if k.startswith("prompt_")):
        row, attribute = figures[key], key[len("prompt_"):]
        lo, hi = row["front_share_ci95"]
        slo, shi = row["shown_given_judged_front_ci95"]
        lines.append(f"'a {attribute} <kind>' (no view phrase): judged 'front' {row['front_share']:.3f} (95% CI {lo:.3f}-{hi:.3f}); "
                     f"{attribute} seen in {row['shown_given_judged_front']:.3f} (95% CI {slo:.3f}-{shi:.3f}) of those")
    return "\n".join(lines)


def data_front_share(bias: WorldBias = WorldBias(), n: int = 4000) -> float:
    samples, _ = make_samples(bias, n=n)
    return statistics(samples)["view_share"]["front"]


def run_checks(prior: str, judge_folder: str, settings: CheckSettings = CheckSettings(), device: str = "cpu",
               cache: Optional[str] = None, log=print):
    """Sample (or reuse the samples cached in ``cache`` for the same prior and settings), judge,
    summarise (``summarise_checks``)."""
    prompts = check_prompts()
    extra = attribute_prompts()
    key = {"settings": dataclasses.asdict(settings), "prompts": [p for p, _, _ in prompts + extra],
           "unet": sha256(os.path.join(prior, "unet", "diffusion_pytorch_model.safetensors")),
           "text_encoder": sha256(os.path.join(prior, "text_encoder", "model.safetensors"))}
    images = None
    if cache and os.path.exists(cache):
        stored = torch.load(cache)
        if stored.get("key") == key:
            images = stored["images"]
            log(f"reusing the samples in {cache}")
    if images is None:
        sampler, encode = load_sampler(prior, device, half_precision=False)
        images = sample(sampler, encode, prompts + extra, settings, log)
        if cache:
            os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
            torch.save({"key": key, "images": images}, cache)
    judge = Judge.load(judge_folder, device)
    results = judge_samples(judge, images, prompts, log, attribute_prompts=extra)
    return results, summarise_checks(results, data_front_share=data_front_share())
