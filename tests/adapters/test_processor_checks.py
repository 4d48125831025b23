"""Settings that switch a processor's method off silently, and embedding caches that poison every
later run: a debias_threshold PMI cannot reach (one warning naming the key and the reachable
range), a prompt made only of view words (a ConfigError) or naming a view itself (one warning),
a cached embedding of the wrong shape (one warning naming the file, computed again)."""

import logging
import os

import pytest
import torch

import antijanus.prompting.mlm
import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.prompting.debias import DebiasSettings, threshold_problem
from antijanus.utils.errors import ConfigError
from fakes import SmilingScorer  # noqa: E402


@pytest.fixture
def config(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # threestudio caches under ./.threestudio_cache
    monkeypatch.setattr(antijanus.prompting.mlm, "MaskedLMViewScorer", SmilingScorer)
    return {"pretrained_model_name_or_path": tiny_sd, "prompt": "a smiling corgi", "spawn": False}


@pytest.fixture
def warnings(monkeypatch):
    found = []
    monkeypatch.setattr(threestudio, "warn", found.append)
    return found


def make(config, name="bert-pmi-prompt-processor"):
    return threestudio.find(name)(config)


def test_a_threshold_pmi_cannot_reach_is_one_warning_naming_the_key_and_the_range(config, warnings):
    """PMI with P(u) = 1/2 is below 2: at 5 every word contradicts every view (INFO lines only before)."""
    processor = make({**config, "debias_threshold": 5.0})
    said = [w for w in warnings if "debias_threshold" in w]
    assert len(said) == 1
    assert "`system.prompt_processor.debias_threshold` = 5:" in said[0] and "reachable range is (0, 2)" in said[0]
    assert processor.debiased.kept_whole == ["side", "front", "back", "overhead"]  # what it did: nothing
    warnings.clear()
    make({**config, "debias_threshold": 0.95})
    make({**config, "debias_threshold": 5.0, "use_prompt_debiasing": False})  # (unused keys: another warning)
    assert not [w for w in warnings if "reachable range" in w]


def test_the_reachable_range_follows_p_word_and_the_normalisation():
    views = dict(views=("front", "back"), view_words=("front", "back"))
    assert threshold_problem(DebiasSettings(**views, threshold=1.99)) is None
    assert "(0, 2)" in threshold_problem(DebiasSettings(**views, threshold=2.0))
    assert "(0, 4)" in threshold_problem(DebiasSettings(**views, threshold=4.0, p_word=0.25))
    assert threshold_problem(DebiasSettings(**views, threshold=1.0, normalization="max")) is None
    assert "(0, 1]" in threshold_problem(DebiasSettings(**views, threshold=1.5, normalization="max"))
    assert "(0, 2]" in threshold_problem(DebiasSettings(**views, threshold=3.0, normalization="mean"))
    with pytest.raises(ConfigError, match="debias_threshold.*finite"):
        DebiasSettings(**views, threshold=float("inf")).validate()


@pytest.mark.parametrize("name", ["bert-pmi-prompt-processor", "dnp-prompt-processor"])
def test_a_prompt_of_view_words_only_is_a_config_error(config, name):
    """It trained on 'front view side view back view, back view' without a word."""
    with pytest.raises(ConfigError, match="names only views, no object") as caught:
        make({**config, "prompt": "front view side view back view", "negative_prompt": "blurry"}, name)
    assert caught.value.key == "system.prompt_processor.prompt"


@pytest.mark.parametrize("name", ["bert-pmi-prompt-processor", "dnp-prompt-processor"])
def test_a_prompt_naming_a_view_is_one_warning(config, warnings, name):
    make({**config, "prompt": "a smiling corgi, back view", "negative_prompt": "blurry"}, name)
    said = [w for w in warnings if "names the view" in w]
    assert len(said) == 1 and "['back view']" in said[0] and "system.prompt_processor.prompt" in said[0]
    warnings.clear()
    make({**config, "prompt": "a corgi sitting on its back", "negative_prompt": "blurry"}, name)
    assert not [w for w in warnings if "names the view" in w]


def test_a_cached_embedding_of_the_wrong_shape_is_computed_again(config, caplog):
    """Before: `stack expects each tensor to be equal size` in every run until deleted by hand."""
    first = make(config)
    path = first.embedding_path(first.prompts_vd[2])
    torch.save(torch.zeros(5, 7), path)  # another model's, or another tool's
    with caplog.at_level(logging.WARNING):
        again = make(config)
    assert torch.equal(again().text_embeddings_vd, first().text_embeddings_vd)
    said = [r.getMessage() for r in caplog.records if path in r.getMessage()]
    assert len(said) == 1 and "shape (5, 7), not (77, 32)" in said[0]
    assert torch.load(path).shape == (77, 32)


def test_a_cached_embedding_with_nan_is_computed_again(config, caplog):
    first = make(config)
    path = first.embedding_path(first.prompt)
    torch.save(torch.full((77, 32), float("nan")), path)
    with caplog.at_level(logging.WARNING):
        again = make(config)
    assert torch.isfinite(again().text_embeddings).all() and os.path.exists(path)
    assert len([r for r in caplog.records if path in r.getMessage() and "inf or nan" in r.getMessage()]) == 1
