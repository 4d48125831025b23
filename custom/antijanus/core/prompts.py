"""Reading view-dependent text embeddings out of a threestudio ``PromptProcessorOutput``.

Only attributes are read (duck typing), so this module needs no threestudio import. Used:
``text_embeddings_vd`` / ``uncond_text_embeddings_vd`` [Nv, tokens, features], ``directions``
(objects with ``name`` and ``condition(elevation, azimuth, camera_distances) -> bool[B]``),
``direction2idx``, ``text_embeddings`` / ``uncond_text_embeddings`` [1, tokens, features], and,
when a processor provides it, ``empty_text_embeddings`` [1, tokens, features] (the "" prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .views import VIEWS


class PromptOutputError(ValueError):
    """The prompt processor's output lacks what the guidance needs."""


def direction_indices(
    prompt_utils: Any, elevation: Tensor, azimuth: Tensor, camera_distances: Tensor
) -> Tensor:
    """Index into the processor's directions for each camera, exactly as threestudio assigns
    them: every direction's condition is applied in order, later ones overriding earlier."""
    index = torch.zeros_like(elevation, dtype=torch.long)
    for direction in prompt_utils.directions:
        index[direction.condition(elevation, azimuth, camera_distances)] = (
            prompt_utils.direction2idx[direction.name]
        )
    return index


@dataclass
class ViewEmbeddings:
    """Embeddings of the canonical views (order VIEWS) and which rows exist (a processor without
    an overhead direction has no overhead row)."""

    positive: Tensor  # [4, tokens, features]
    available: Tensor  # [4] bool
    canonical_of_direction: Tensor  # [Nv] long: canonical view of each processor direction

    @classmethod
    def from_prompt_output(cls, prompt_utils: Any, require=("front", "side", "back")) -> "ViewEmbeddings":
        names = dict(getattr(prompt_utils, "direction2idx", {}) or {})
        missing = [v for v in require if v not in names]
        if missing:
            raise PromptOutputError(
                f"the prompt processor provides directions {sorted(names)}, but Perp-Neg needs "
                f"view directions named {list(require)} (missing {missing}). Use a prompt "
                "processor with threestudio's view-dependent directions."
            )
        vd = prompt_utils.text_embeddings_vd
        positive = vd.new_zeros(len(VIEWS), *vd.shape[1:])
        available = torch.zeros(len(VIEWS), dtype=torch.bool)
        canonical = torch.full((vd.shape[0],), -1, dtype=torch.long)
        for view_index, view in enumerate(VIEWS):
            if view in names:
                positive[view_index] = vd[names[view]]
                available[view_index] = True
                canonical[names[view]] = view_index
        return cls(positive, available, canonical)


def empty_prompt_embeddings(prompt_utils: Any) -> Optional[Tensor]:
    """The "" prompt embedding [1, tokens, features] when the processor provides it."""
    return getattr(prompt_utils, "empty_text_embeddings", None)


#: threestudio's PromptProcessor keys for its built-in Perp-Neg weight functions, (a, b, c) for
#: f(x) = a exp(-b x) + c.
PROCESSOR_WEIGHT_KEYS = ("perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf")


@dataclass(frozen=True)
class ProcessorPerpNeg:
    """threestudio's processor-side Perp-Neg settings, as its PromptProcessorOutput carries them."""

    use_perp_neg: bool
    weights: Optional[dict]  # key -> tuple of floats, or None when the output carries none


def processor_perp_neg(prompt_utils: Any) -> Optional[ProcessorPerpNeg]:
    """The processor's ``use_perp_neg`` and ``perp_neg_f_*`` when its output has them (threestudio's
    stock processors and their subclasses do), else None."""
    if not hasattr(prompt_utils, "use_perp_neg"):
        return None
    weights = {k: tuple(float(v) for v in getattr(prompt_utils, k)) for k in PROCESSOR_WEIGHT_KEYS
               if getattr(prompt_utils, k, None) is not None}
    return ProcessorPerpNeg(bool(prompt_utils.use_perp_neg),
                            weights if len(weights) == len(PROCESSOR_WEIGHT_KEYS) else None)


def identical_view_embeddings(prompt_utils: Any, views=("front", "side", "back")) -> bool:
    """True when the processor's view prompts all have the same text embedding: the view phrase
    was truncated away (a prompt longer than the text encoder's 77 tokens), so view-dependent
    prompting and Perp-Neg would silently do nothing."""
    names = dict(getattr(prompt_utils, "direction2idx", {}) or {})
    rows = [names[v] for v in views if v in names]
    if len(rows) < 2:
        return False
    vd = prompt_utils.text_embeddings_vd
    return all(torch.equal(vd[rows[0]], vd[r]) for r in rows[1:])
