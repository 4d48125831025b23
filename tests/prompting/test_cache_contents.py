"""Cache files that read but hold the wrong content (a key missing, another model's result, a
malformed table, a damaged DNS image): one warning naming the file, the value computed again
and the file rewritten, never a crash in every later run (KeyError: 'prompt')."""

import json
import logging
import os

import torch

from antijanus.prompting.debias import DebiasSettings, cached_debias
from antijanus.prompting.dnp import SamplingSettings, cached_dnp

VIEWS = dict(views=("front", "back"), view_words=("front", "back"))


class SmilingScorer:
    """'smiling' pulls towards the front view."""

    def view_probabilities(self, prompts, view_words):
        return torch.tensor([[0.9, 0.1] if "smiling" in p else [0.5, 0.5] for p in prompts], dtype=torch.float64)


def debias_twice(tmp_path, spoil, caplog):
    """Compute and cache, ``spoil`` the cached JSON, then read it again: (result, builds, log)."""
    settings = DebiasSettings(**VIEWS, protected_words=("corgi",))
    built = []

    def make_scorer():
        built.append(1)
        return SmilingScorer()

    first, path, _ = cached_debias("a smiling corgi", settings, "bert-x", str(tmp_path), make_scorer)
    with open(path) as f:
        data = json.load(f)
    with open(path, "w") as f:
        json.dump(spoil(data), f)
    with caplog.at_level(logging.WARNING):
        again, path2, hit = cached_debias("a smiling corgi", settings, "bert-x", str(tmp_path), make_scorer)
    assert path2 == path and not hit and built == [1, 1]
    assert again.view_prompts == first.view_prompts == {"front": "a smiling corgi", "back": "a corgi"}
    with open(path) as f:
        assert json.load(f)["prompt"] == "a smiling corgi"  # rewritten whole
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and path in warnings[0] and "not valid" in warnings[0]
    return warnings[0]


def test_a_debias_json_without_a_key_is_computed_again(tmp_path, caplog):
    message = debias_twice(tmp_path, lambda d: {k: v for k, v in d.items() if k != "prompt"}, caplog)
    assert "'prompt' is missing" in message


def test_a_debias_json_of_another_model_or_views_is_computed_again(tmp_path, caplog):
    assert "another masked LM ('bert-y')" in debias_twice(tmp_path, lambda d: {**d, "model": "bert-y"}, caplog)


def test_a_debias_json_with_views_missing_is_computed_again(tmp_path, caplog):
    message = debias_twice(tmp_path, lambda d: {**d, "view_prompts": {"front": "a smiling corgi"}}, caplog)
    assert "'view_prompts' does not hold one entry per view" in message


def test_a_debias_json_with_a_malformed_table_is_computed_again(tmp_path, caplog):
    def spoil(data):
        data["table"]["pmi"] = data["table"]["pmi"][:1]
        return data

    assert "PMI table is not 3 words x 2 views" in debias_twice(tmp_path, spoil, caplog)


def test_the_debias_cache_records_its_model(tmp_path):
    _, path, _ = cached_debias("a smiling corgi", DebiasSettings(**VIEWS), "bert-x", str(tmp_path), SmilingScorer)
    with open(path) as f:
        assert json.load(f)["model"] == "bert-x"


class FakeSampler:
    def sample(self, cond, uncond, settings, mode="cfg", progress=False):
        return torch.rand(1, 3, 8, 8)


class FakeCaptioner:
    def caption(self, images, progress=False):
        return ["a blurry photo"]


def dnp_twice(tmp_path, spoil, caplog):
    built = []

    def make_sampler():
        built.append("sd")
        return FakeSampler(), lambda prompts: torch.zeros(len(prompts), 77, 8)

    def run():
        return cached_dnp("a corgi", "sd-x", SamplingSettings(steps=2), "blip-x", str(tmp_path), make_sampler,
                          FakeCaptioner, progress=False)

    first = run()
    spoil(first)
    with caplog.at_level(logging.WARNING):
        again = run()
    assert not again.cache_hit and built == ["sd", "sd"] and again.negative_prompt == "a blurry photo"
    assert run().cache_hit  # rewritten: valid again
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and first.record_path in warnings[0]
    return warnings[0]


def rewrite_record(change):
    def spoil(result):
        with open(result.record_path) as f:
            record = json.load(f)
        with open(result.record_path, "w") as f:
            json.dump(change(record), f)
    return spoil


def test_a_dnp_record_without_n_star_is_computed_again(tmp_path, caplog):
    message = dnp_twice(tmp_path, rewrite_record(lambda r: {k: v for k, v in r.items() if k != "negative_prompt"}),
                        caplog)
    assert "'negative_prompt' is missing" in message


def test_a_dnp_record_of_another_captioner_is_computed_again(tmp_path, caplog):
    assert "another captioner" in dnp_twice(tmp_path, rewrite_record(lambda r: {**r, "captioner": "git-x"}), caplog)


def test_a_damaged_dns_image_is_computed_again(tmp_path, caplog):
    def spoil(result):
        with open(result.image_path, "r+b") as f:
            f.truncate(os.path.getsize(result.image_path) // 2)

    assert "DNS image" in dnp_twice(tmp_path, spoil, caplog)
