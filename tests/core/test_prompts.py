"""Reading a threestudio PromptProcessorOutput (core/prompts.py): directions assigned as threestudio
does, the canonical view embeddings, the processor's Perp-Neg settings, truncated view prompts."""

import types

import pytest
import torch

from antijanus.core.prompts import (
    PROCESSOR_WEIGHT_KEYS,
    PromptOutputError,
    ViewEmbeddings,
    direction_indices,
    empty_prompt_embeddings,
    identical_view_embeddings,
    processor_perp_neg,
)
from antijanus.core.views import VIEWS

from fakes import CAMERAS
from helpers import make_prompt_output


def test_directions_are_assigned_in_order_later_ones_overriding():
    """threestudio's order side, front, back, overhead: side is the default; |azimuth| = 45 is not
    front (strict bound); overhead (elevation 80) overrides the front it also is."""
    prompts = make_prompt_output()
    index = direction_indices(prompts, **CAMERAS)
    names = {i: n for n, i in prompts.direction2idx.items()}
    assert [names[i] for i in index.tolist()] == ["front", "side", "back", "overhead"]


def test_view_embeddings_are_in_canonical_order_whatever_the_processors_order():
    prompts = make_prompt_output()  # the processor's order: side, front, back, overhead
    views = ViewEmbeddings.from_prompt_output(prompts)
    for view_index, view in enumerate(VIEWS):
        row = prompts.direction2idx[view]
        assert torch.equal(views.positive[view_index], prompts.text_embeddings_vd[row])
    assert views.available.tolist() == [True] * 4
    # processor direction -> canonical view: side -> 1, front -> 0, back -> 2, overhead -> 3
    assert views.canonical_of_direction.tolist() == [1, 0, 2, 3]


def test_a_processor_without_overhead_has_no_overhead_row():
    prompts = make_prompt_output()
    prompts.direction2idx = {k: v for k, v in prompts.direction2idx.items() if k != "overhead"}
    views = ViewEmbeddings.from_prompt_output(prompts)
    assert views.available.tolist() == [True, True, True, False]
    assert torch.equal(views.positive[3], torch.zeros_like(views.positive[3]))
    assert views.canonical_of_direction.tolist() == [1, 0, 2, -1]


def test_missing_view_directions_are_an_error_naming_them():
    prompts = make_prompt_output()
    prompts.direction2idx = {"side": 0, "front": 1}
    with pytest.raises(PromptOutputError, match=r"missing \['back'\]"):
        ViewEmbeddings.from_prompt_output(prompts)


def test_empty_prompt_embeddings_only_when_the_processor_provides_them():
    prompts = make_prompt_output()
    assert empty_prompt_embeddings(prompts) is None
    prompts.empty_text_embeddings = torch.ones(1, 77, 32)
    assert empty_prompt_embeddings(prompts) is prompts.empty_text_embeddings


def test_processor_perp_neg_reads_use_perp_neg_and_all_four_weights():
    assert processor_perp_neg(make_prompt_output()) is None  # no use_perp_neg: not threestudio's
    weights = {key: [1.0, 0.5, float(i)] for i, key in enumerate(PROCESSOR_WEIGHT_KEYS)}
    output = types.SimpleNamespace(use_perp_neg=1, **weights)
    settings = processor_perp_neg(output)
    assert settings.use_perp_neg is True
    assert settings.weights == {key: tuple(value) for key, value in weights.items()}
    output.perp_neg_f_sf = None  # an incomplete set of weights is no set
    assert processor_perp_neg(output).weights is None


def test_identical_view_embeddings_detects_a_cut_off_view_phrase():
    prompts = make_prompt_output()
    assert not identical_view_embeddings(prompts)
    prompts.text_embeddings_vd[:] = prompts.text_embeddings_vd[0]  # every view prompt the same
    assert identical_view_embeddings(prompts)
    prompts.direction2idx = {"front": 1}  # fewer than two views: nothing to compare
    assert not identical_view_embeddings(prompts)
