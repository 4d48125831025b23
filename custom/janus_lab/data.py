"""The lab's captioned images, biased as real captioned photos are.

* Cameras: most photos are taken from the front. An azimuth comes from a front mode (normal
  around 0) with probability ``p_front_mode``, else uniformly from the whole circle; a few photos
  look down from overhead.
* Captions are written as a captioner would: the kind, and only the attributes that the image
  shows (a back view of a smiling bear is not called smiling), each visible one named with
  probability ``p_mention``.
* A view phrase (", front view", ", side view", ", back view", ", overhead view" / ", top view":
  what the prompt processors append) is added only with probability ``p_view_phrase``.

Everything is drawn from one ``torch.Generator`` seeded with ``WorldBias.seed``: the same
parameters give the same data set, image for image.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .world import ATTRIBUTES, KINDS, OPTIONAL_ATTRIBUTES, VIEWS, Creature, render_batched

# The view phrase for each region as appended by the prompt processors (threestudio's stock
# processor says "overhead view", the D-SDS paper and our processors "top view").
VIEW_PHRASES: Dict[str, Tuple[str, ...]] = {
    "side": ("side view",), "front": ("front view",), "back": ("back view",),
    "overhead": ("overhead view", "top view"),
}
ATTRIBUTE_WORDS = {"smiling": "smiling", "striped": "striped", "hat": "hat"}


@dataclass(frozen=True)
class WorldBias:
    """Every bias of the data set, with its default. Chosen once, before any method was run on
    the lab, to resemble captioned photo collections (front-heavy, views rarely named)."""

    n_images: int = 24000  # size of the data set
    seed: int = 0  # everything below is drawn from this seed
    kind_weights: Tuple[float, ...] = (1.0, 1.0, 1.0)  # relative frequency of KINDS
    p_smiling: float = 0.5  # P(a creature has the mouth); front-only attribute
    p_striped: float = 0.5  # P(a creature has the back stripes); back-only attribute
    p_hat: float = 0.5  # P(a creature wears a hat); seen from everywhere
    p_front_mode: float = 0.7  # P(azimuth from the front mode); else uniform over 360 degrees
    front_sigma: float = 20.0  # std of the front mode (degrees)
    p_overhead: float = 0.05  # P(elevation from overhead_range); else from elevation_range
    elevation_range: Tuple[float, float] = (-10.0, 40.0)  # degrees, uniform
    overhead_range: Tuple[float, float] = (60.0, 89.0)  # degrees, uniform
    distance_range: Tuple[float, float] = (1.4, 1.7)  # camera distance, uniform
    fovy_range: Tuple[float, float] = (55.0, 65.0)  # vertical field of view (degrees), uniform
    light_jitter: float = 30.0  # light azimuth offset from the camera, uniform +- (degrees)
    p_mention: float = 0.9  # P(a visible attribute is named in the caption)
    p_view_phrase: float = 0.1  # P(the caption ends with the image's view phrase)
    p_top_phrase: float = 0.5  # overhead images with a phrase: P("top view") vs "overhead view"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Sample:
    creature: Creature
    elevation: float
    azimuth: float
    distance: float
    fovy: float
    light_jitter: float
    view: str = ""  # ground truth region (VIEWS)
    visible: Tuple[str, ...] = ()  # ground truth visible attributes (ATTRIBUTES)
    caption: str = ""  # caption without view phrase
    view_phrase: str = ""  # "" or e.g. "front view"

    @property
    def text(self) -> str:
        """The training caption: the caption, plus ", <view phrase>" when one was drawn."""
        return f"{self.caption}, {self.view_phrase}" if self.view_phrase else self.caption


def caption_for(kind: str, named: Sequence[str]) -> str:
    """'a smiling striped bear wearing a hat': adjectives before the kind, the hat after."""
    adjectives = [ATTRIBUTE_WORDS[a] for a in ("smiling", "striped") if a in named]
    words = ["a", *adjectives, kind]
    if "hat" in named:
        words += ["wearing", "a", "hat"]
    return " ".join(words)


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64).float() * (high - low) + low


def sample_cameras(bias: WorldBias, n: int, g: torch.Generator) -> Dict[str, Tensor]:
    front = torch.rand(n, generator=g) < bias.p_front_mode
    azimuth = torch.where(front, torch.randn(n, generator=g) * bias.front_sigma, _uniform(g, n, -180.0, 180.0))
    azimuth = (azimuth + 180.0) % 360.0 - 180.0
    overhead = torch.rand(n, generator=g) < bias.p_overhead
    elevation = torch.where(overhead, _uniform(g, n, *bias.overhead_range), _uniform(g, n, *bias.elevation_range))
    return {"elevation": elevation, "azimuth": azimuth, "distance": _uniform(g, n, *bias.distance_range),
            "fovy": _uniform(g, n, *bias.fovy_range), "light_jitter": _uniform(g, n, -bias.light_jitter, bias.light_jitter)}


def sample_creatures(bias: WorldBias, n: int, g: torch.Generator) -> List[Creature]:
    weights = torch.tensor(bias.kind_weights, dtype=torch.float64)
    if len(weights) != len(KINDS) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"kind_weights needs {len(KINDS)} non-negative weights, got {bias.kind_weights}")
    kinds = torch.multinomial(weights, n, replacement=True, generator=g)
    flags = torch.rand(n, 3, generator=g) < torch.tensor([bias.p_smiling, bias.p_striped, bias.p_hat])
    return [Creature(KINDS[k], bool(f[0]), bool(f[1]), bool(f[2])) for k, f in zip(kinds.tolist(), flags.tolist())]


def make_samples(bias: WorldBias = WorldBias(), n: Optional[int] = None, render: bool = True,
                 chunk: int = 256):
    """The data set: samples (camera, creature, ground truth, caption) and, with ``render``,
    the images [N, 3, 32, 32] in [0, 1]. Deterministic from ``bias.seed``."""
    n = bias.n_images if n is None else n
    g = torch.Generator().manual_seed(int(bias.seed))
    creatures = sample_creatures(bias, n, g)
    cams = sample_cameras(bias, n, g)
    mention = torch.rand(n, len(OPTIONAL_ATTRIBUTES), generator=g) < bias.p_mention
    phrase = torch.rand(n, generator=g) < bias.p_view_phrase
    top = torch.rand(n, generator=g) < bias.p_top_phrase
    out = render_batched(creatures, cams["elevation"], cams["azimuth"], cams["distance"], cams["fovy"],
                         chunk=chunk, light_jitter=cams["light_jitter"])
    samples = []
    for i, creature in enumerate(creatures):
        visible = tuple(a for a, v in zip(ATTRIBUTES, out["visible"][i].tolist()) if v and creature.has(a))
        named = [a for j, a in enumerate(OPTIONAL_ATTRIBUTES) if a in visible and bool(mention[i, j])]
        view = VIEWS[int(out["view"][i])]
        phrases = VIEW_PHRASES[view]
        view_phrase = (phrases[-1] if (len(phrases) > 1 and bool(top[i])) else phrases[0]) if bool(phrase[i]) else ""
        samples.append(Sample(creature, float(cams["elevation"][i]), float(cams["azimuth"][i]),
                              float(cams["distance"][i]), float(cams["fovy"][i]), float(cams["light_jitter"][i]),
                              view, visible, caption_for(creature.kind, named), view_phrase))
    return samples, (out["image"] if render else None)


def statistics(samples: Sequence[Sample]) -> Dict[str, object]:
    """View histogram, P(view phrase), P(attribute word in caption | view), kinds, and the share
    of captions that name an attribute the image does not show (always 0)."""
    n = len(samples)
    views = Counter(s.view for s in samples)
    stats: Dict[str, object] = {
        "n": n,
        "view_share": {v: views[v] / n for v in VIEWS},
        "p_view_phrase": sum(bool(s.view_phrase) for s in samples) / n,
        "kind_share": {k: sum(s.creature.kind == k for s in samples) / n for k in KINDS},
        "p_word_given_view": {
            a: {v: (sum(ATTRIBUTE_WORDS[a] in s.caption.split() for s in samples if s.view == v) / views[v]
                    if views[v] else float("nan")) for v in VIEWS} for a in OPTIONAL_ATTRIBUTES},
        "p_visible_given_view": {
            a: {v: (sum(a in s.visible for s in samples if s.view == v) / views[v] if views[v] else float("nan"))
                for v in VIEWS} for a in ATTRIBUTES},
        "p_phrase_given_view": {v: (sum(bool(s.view_phrase) for s in samples if s.view == v) / views[v]
                                    if views[v] else float("nan")) for v in VIEWS},
        "invisible_named": sum(any(ATTRIBUTE_WORDS[a] in s.caption.split() and a not in s.visible
                                   for a in OPTIONAL_ATTRIBUTES) for s in samples) / n,
    }
    return stats


def format_statistics(stats: Dict[str, object]) -> str:
    lines = [f"images: {stats['n']}   P(view phrase): {stats['p_view_phrase']:.3f}   "
             f"captions naming an invisible attribute: {stats['invisible_named']:.3f}",
             "view share:   " + "  ".join(f"{v} {p:.3f}" for v, p in stats["view_share"].items()),
             "kind share:   " + "  ".join(f"{k} {p:.3f}" for k, p in stats["kind_share"].items()),
             "P(word | view)      " + "  ".join(f"{v:>8}" for v in VIEWS)]
    for a, row in stats["p_word_given_view"].items():
        lines.append(f"  {a:<17} " + "  ".join(f"{row[v]:8.3f}" for v in VIEWS))
    lines.append("P(visible | view)   " + "  ".join(f"{v:>8}" for v in VIEWS))
    for a, row in stats["p_visible_given_view"].items():
        lines.append(f"  {a:<17} " + "  ".join(f"{row[v]:8.3f}" for v in VIEWS))
    return "\n".join(lines)
