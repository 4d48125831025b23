"""Perp-Neg's Table 1 on the lab prior, judged by the lab judge (issue 15, item 1).

For each kind ("a bear", "a robot", "a frog") and requested view (front, side, back), the lab
prior samples with vanilla CFG (the view phrase appended: "a bear, back view"), composable
negation (CEBM) and Perp-Neg, with the paper's view negatives (back -> side + front, side ->
front, front -> side) and the same seeds for every method: ``tools.view2d.run_view_experiment``
with the judge (``janus_lab.classifier.JudgeViewClassifier``) in place of CLIP. The judge chooses among
all four of its regions (an image judged "overhead" is a failure for every request). A cell's
success rate is the share of its images judged to show the requested view, with its 95 % Wilson
interval (``janus_lab.stats.wilson``).

Settings are the existing 2D experiment's defaults (``scripts/view_experiment_2d.py``): DDIM 50
steps, guidance scale 7.5, negative weight 1.0, fixed before any result. Further negative weights
run as separate rows ("cebm w=2", "perp-neg w=2"); vanilla does not depend on them.
The judge also names each image's kind (``kind_accuracy``: whether a method erases the prompted
object, CEBM's known failure) and every judged view is kept (``view_shares``).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import torch

from antijanus.core.views import PERP_NEG_PRESETS
from antijanus.prompting.dnp import SamplingSettings
from antijanus.tools.view2d import METHODS, ViewExperiment, interpolation_images, run_view_experiment
from antijanus.utils.errors import ConfigError
from antijanus.utils.imaging import image_grid
from .stats import wilson
from .world import KINDS, VIEWS

REQUESTED = ("front", "side", "back")
PHRASES = {"front": "front view", "side": "side view", "back": "back view"}  # the world's view phrases


@dataclass
class LabViewSettings:
    kinds: Sequence[str] = KINDS
    views: Sequence[str] = REQUESTED
    methods: Sequence[str] = METHODS
    seeds: Sequence[int] = tuple(range(50))  # the same seeds for every method and cell
    negative_weights: Sequence[float] = (1.0,)  # the first is the default row; others: extra rows
    steps: int = 50  # DDIM steps (scripts/view_experiment_2d.py's default)
    guidance_scale: float = 7.5
    batch_size: int = 25  # seeds sampled together
    interpolation_steps: int = 9  # azimuths 0..180 of the Perp-Neg interpolation grid (0: none)
    interpolation_preset: str = "threestudio"  # core.views.PERP_NEG_PRESETS
    interpolation_seed: int = 0

    def validate(self) -> "LabViewSettings":
        for kind in self.kinds:
            if kind not in KINDS:
                raise ConfigError("kinds", kind, "unknown kind", KINDS)
        if not self.kinds or not self.seeds or not self.negative_weights:
            raise ConfigError("kinds/seeds/negative_weights", None, "each needs at least one value")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", list(self.seeds), "must not repeat a seed")
        if len({float(w) for w in self.negative_weights}) != len(self.negative_weights):
            raise ConfigError("negative_weights", list(self.negative_weights), "must not repeat a weight")
        if self.interpolation_preset not in PERP_NEG_PRESETS:
            raise ConfigError("interpolation_preset", self.interpolation_preset, "unknown preset",
                              tuple(PERP_NEG_PRESETS))
        self.experiment(self.negative_weights[0], list(self.methods)).validate()
        return self

    def sampling(self, seed: int = 0) -> SamplingSettings:
        return SamplingSettings(steps=self.steps, guidance_scale=self.guidance_scale, seed=seed)

    def experiment(self, negative_weight: float, methods: Sequence[str]) -> ViewExperiment:
        return ViewExperiment(prompts=[prompt_of(k) for k in self.kinds], views=tuple(self.views),
                              methods=tuple(methods), seeds=tuple(self.seeds), negative_weight=negative_weight,
                              phrases=dict(PHRASES), settings=self.sampling(), answers=VIEWS,
                              batch_size=self.batch_size)

    def rows(self) -> List[Tuple[str, str, float]]:
        """(row label, method, negative weight): every method at the default weight, then the
        weighted methods at each further weight."""
        first, *extra = self.negative_weights
        rows = [(m, m, first) for m in self.methods]
        rows += [(f"{m} w={w:g}", m, w) for w in extra for m in self.methods if m != "vanilla"]
        return rows


def prompt_of(kind: str) -> str:
    return f"a {kind}"


def run_lab_view_experiment(sampler, classifier, settings: LabViewSettings, progress: bool = True,
                            log=print) -> Dict:
    """Sample, judge and tabulate. ``classifier``: a JudgeViewClassifier (its judge also names
    each image's kind)."""
    settings.validate()
    start = time.time()
    records: List[Dict] = []
    for weight in dict.fromkeys(float(w) for w in settings.negative_weights):
        rows = [(label, m) for label, m, w in settings.rows() if w == weight]
        methods = [m for _, m in rows]
        if not methods:
            continue
        log(f"negative weight {weight:g}: {', '.join(methods)}")
        result = run_view_experiment(sampler, classifier, settings.experiment(weight, methods), progress)
        label_of = dict((m, label) for label, m in rows)
        for r in result["records"]:
            records.append({**r, "row": label_of[r["method"]], "negative_weight": weight,
                            "kind": settings.kinds[[prompt_of(k) for k in settings.kinds].index(r["prompt"])]})
    sample_s = time.time() - start
    images = torch.stack([r["image"] for r in records])
    verdict = classifier.judge(images)
    for r, kind in zip(records, verdict["kind"].tolist()):
        r["judged_kind"] = KINDS[kind]
    interpolation = None
    if settings.interpolation_steps > 0:
        interpolation = interpolation_grid(sampler, classifier, settings)
    return {"records": records, "table": success_table(records, settings), "interpolation": interpolation,
            "timings": {"sampling_s": sample_s, "total_s": time.time() - start, "images": len(records)},
            "settings": {**asdict(settings), "kinds": list(settings.kinds), "seeds": list(settings.seeds)}}


def cell(records: Sequence[Mapping], view: str) -> Dict[str, object]:
    """Success rate of a cell (images that requested ``view``), its Wilson interval, the shares
    of every judged view and the kind accuracy."""
    n = len(records)
    hits = sum(r["predicted"] == view for r in records)
    return {"n": n, "hits": hits, "rate": hits / n if n else float("nan"), "ci95": list(wilson(hits, n)),
            "view_shares": {v: sum(r["predicted"] == v for r in records) / n if n else float("nan") for v in VIEWS},
            "kind_accuracy": sum(r["judged_kind"] == r["kind"] for r in records) / n if n else float("nan")}


def success_table(records: Sequence[Mapping], settings: LabViewSettings) -> Dict[str, Dict[str, Dict[str, Dict]]]:
    """table[row][kind or "all"][view] = cell."""
    table: Dict[str, Dict[str, Dict[str, Dict]]] = {}
    for label, _, _ in settings.rows():
        mine = [r for r in records if r["row"] == label]
        table[label] = {group: {view: cell([r for r in mine if r["view"] == view
                                            and (group == "all" or r["kind"] == group)], view)
                                for view in settings.views}
                        for group in [*settings.kinds, "all"]}
    return table


def format_table(table: Mapping, group: str = "all") -> str:
    """Markdown: rows = methods, columns = requested views, 'rate % (95 % CI)'."""
    views = list(next(iter(table.values()))[group])
    n = next(iter(next(iter(table.values()))[group].values()))["n"]
    lines = [f"| method ({group}, n = {n} per cell) | " + " | ".join(f"{v} view" for v in views) + " |",
             "| --- | " + " | ".join("---" for _ in views) + " |"]
    for label, groups in table.items():
        cells = [groups[group][v] for v in views]
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * c['rate']:.1f} % ({100 * c['ci95'][0]:.1f}-{100 * c['ci95'][1]:.1f})" for c in cells) + " |")
    return "\n".join(lines)


def format_shares(table: Mapping, group: str = "all") -> str:
    """Markdown: per method and requested view, the share of each judged view and the kind accuracy."""
    lines = ["| method | requested | " + " | ".join(f"judged {v}" for v in VIEWS) + " | kind right |",
             "| --- | --- | " + " | ".join("---" for _ in VIEWS) + " | --- |"]
    for label, groups in table.items():
        for view, c in groups[group].items():
            lines.append(f"| {label} | {view} | " + " | ".join(f"{c['view_shares'][v]:.2f}" for v in VIEWS)
                         + f" | {c['kind_accuracy']:.2f} |")
    return "\n".join(lines)


def interpolation_grid(sampler, classifier, settings: LabViewSettings) -> Dict[str, object]:
    """Per kind, the Perp-Neg front -> side -> back interpolation (azimuth 0..180) from one seed,
    each image judged."""
    azimuths = torch.linspace(0.0, 180.0, settings.interpolation_steps).tolist()
    images, judged = {}, {}
    for kind in settings.kinds:
        images[kind] = interpolation_images(sampler, prompt_of(kind), PERP_NEG_PRESETS[settings.interpolation_preset],
                                            azimuths, settings.sampling(settings.interpolation_seed), PHRASES)
        judged[kind] = [VIEWS[i] for i in classifier.judge(images[kind])["view"].tolist()]
    return {"azimuths": azimuths, "images": images, "judged": judged}


def save_results(result: Mapping, out: str, grid_seeds: int = 10) -> List[str]:
    """success.md, success.json, records.csv, samples.pt (uint8 images with their labels), one
    grid per row and kind (rows: views, columns: the first ``grid_seeds`` seeds) and the
    interpolation grid. Returns the paths written."""
    os.makedirs(out, exist_ok=True)
    table, records, settings = result["table"], result["records"], result["settings"]
    groups = [*settings["kinds"], "all"]
    text = "\n\n".join(format_table(table, g) for g in groups) + "\n\n" + format_shares(table) + "\n"
    paths = []

    def path(name):
        paths.append(os.path.join(out, name))
        return paths[-1]

    with open(path("success.md"), "w") as f:
        f.write(text)
    with open(path("success.json"), "w") as f:
        json.dump({"table": table, "settings": settings, "timings": result["timings"],
                   "interpolation_judged": (result["interpolation"] or {}).get("judged")}, f, indent=2)
    fields = ["row", "method", "negative_weight", "kind", "view", "seed", "predicted", "judged_kind"]
    with open(path("records.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: r[k] for k in fields} for r in records)
    torch.save({"images": (torch.stack([r["image"] for r in records]).clamp(0, 1) * 255).round().to(torch.uint8),
                "records": [{k: r[k] for k in fields} for r in records]}, path("samples.pt"))
    seeds = list(settings["seeds"])[:grid_seeds]
    for label in table:
        for kind in settings["kinds"]:
            chosen = [r for r in records if r["row"] == label and r["kind"] == kind and r["seed"] in seeds]
            slug = label.replace(" ", "").replace("=", "")
            image_grid([r["image"] for r in chosen], [f"{r['view']}->{r['predicted']}" for r in chosen],
                       columns=len(seeds), cell=96, label_height=16).save(path(f"grid-{kind}-{slug}.png"))
    if result["interpolation"]:
        inter = result["interpolation"]
        images = [im for kind in settings["kinds"] for im in inter["images"][kind]]
        labels = [f"{kind} {a:.0f}->{j}" for kind in settings["kinds"]
                  for a, j in zip(inter["azimuths"], inter["judged"][kind])]
        image_grid(images, labels, columns=len(inter["azimuths"]), cell=96, label_height=16).save(
            path("interpolation.png"))
    return paths
