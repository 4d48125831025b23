import json
import os
import subprocess
import sys

import pytest
import torch

from antijanus.testing.tiny_models import make_clip
from antijanus.backbones import BackboneOptions, StableDiffusionBackbone
from antijanus.prompting.dnp import SamplingSettings, StableDiffusionSampler
from antijanus.utils.errors import ConfigError
from antijanus.tools.metrics import CLIPScorer
from antijanus.tools.view2d import (
    ViewExperiment,
    format_success_table,
    interpolation_images,
    run_view_experiment,
    sample_with_negatives,
)
from antijanus.core.views import PERP_NEG_PRESETS
from helpers import REPO  # noqa: E402


@pytest.fixture(scope="module")
def sampler(tiny_sd):
    backbone = StableDiffusionBackbone(
        BackboneOptions(pretrained_model_name_or_path=tiny_sd, half_precision_weights=False), "cpu")
    return StableDiffusionSampler(backbone)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return CLIPScorer(make_clip(str(tmp_path_factory.mktemp("tiny-clip-2d"))))


def test_methods_share_seeds_and_differ_only_by_the_negative_rule(sampler):
    encode = lambda t: sampler.backbone.encode_prompts(t, keep_encoder=True)  # noqa: E731
    uncond, positive, negatives = encode([""]), encode(["a corgi, back view"]), encode(["a corgi, side view", "a corgi, front view"])
    settings = SamplingSettings(steps=2, guidance_scale=7.5, seed=4)
    images = {m: sample_with_negatives(sampler, positive, uncond, negatives, [0.0, 0.0], m, settings)
              for m in ("vanilla", "cebm", "perp-neg")}
    # zero weights: all three are plain CFG from the same initial noise
    assert torch.allclose(images["vanilla"], images["cebm"], atol=1e-4)
    assert torch.allclose(images["vanilla"], images["perp-neg"], atol=1e-4)
    weighted = {m: sample_with_negatives(sampler, positive, uncond, negatives, [2.0, 2.0], m, settings)
                for m in ("cebm", "perp-neg")}
    assert not torch.allclose(weighted["cebm"], weighted["perp-neg"], atol=1e-3)
    # a negative equal to the positive: Perp-Neg keeps plain CFG, CEBM does not
    same = sample_with_negatives(sampler, positive, uncond, positive, [2.0], "perp-neg", settings)
    assert torch.allclose(same, images["vanilla"], atol=1e-4)


def test_view_experiment_success_table(sampler, clip):
    experiment = ViewExperiment(prompts=["a corgi"], seeds=[0, 1], settings=SamplingSettings(steps=2))
    result = run_view_experiment(sampler, clip.similarity, experiment, progress=False)
    records = result["records"]
    assert len(records) == 1 * 3 * 3 * 2
    for method, row in result["success"].items():
        for view, rate in row.items():
            chosen = [r for r in records if r["method"] == method and r["view"] == view]
            assert rate == sum(r["predicted"] == view for r in chosen) / len(chosen)
    table = format_success_table(result["success"])
    assert table.splitlines()[0] == "| method | front view | side view | back view |" and "| perp-neg |" in table


def test_view_interpolation_and_bad_settings(sampler):
    images = interpolation_images(sampler, "a corgi", PERP_NEG_PRESETS["threestudio"], [0, 45, 90, 135, 180],
                                  SamplingSettings(steps=2), {"front": "front view", "side": "side view", "back": "back view"})
    assert images.shape == (5, 3, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(ConfigError, match="views.*unknown view name"):
        ViewExperiment(prompts=["a corgi"], views=["top"]).validate()
    with pytest.raises(ConfigError, match="methods.*unknown method"):
        ViewExperiment(prompts=["a corgi"], methods=["cfg++"]).validate()


def test_view_experiment_script(tiny_sd, clip, tmp_path):
    script = os.path.join(REPO, "scripts", "view_experiment_2d.py")
    out = tmp_path / "v2d"
    result = subprocess.run([sys.executable, script, "--prompts", "a corgi", "--seeds", "0", "--steps", "2",
                             "--model", tiny_sd, "--clip", clip.model.name_or_path, "--interpolation-steps", "3",
                             "--device", "cpu", "--out", str(out)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    success = json.load(open(out / "success.json"))["success"]
    assert set(success) == {"vanilla", "cebm", "perp-neg"}
    assert sorted(p.name for p in out.glob("*.png")) == [
        "a_corgi-cebm.png", "a_corgi-interpolation.png", "a_corgi-perp-neg.png", "a_corgi-vanilla.png"]


def test_a_view_classifier_plugs_into_the_experiment_in_place_of_clip(sampler):
    """Predicted views come from the classifier's view_scores (one call per prompt, all views)."""

    class AlwaysSide:
        name = "judge"
        calls = []

        def view_scores(self, images, prompt, views):
            self.calls.append((len(images), prompt, tuple(views)))
            return torch.tensor([[0.0, 1.0, 0.0]]).expand(len(images), -1)[:, [("front", "side", "back").index(v)
                                                                               for v in views]]

    judge = AlwaysSide()
    experiment = ViewExperiment(prompts=["a corgi", "a lion"], views=["side", "back"], methods=["vanilla"],
                                seeds=[0], settings=SamplingSettings(steps=1))
    result = run_view_experiment(sampler, judge, experiment, progress=False)
    assert sorted(judge.calls) == [(2, "a corgi", ("front", "side", "back")), (2, "a lion", ("front", "side", "back"))]
    assert {r["predicted"] for r in result["records"]} == {"side"}
    assert result["success"] == {"vanilla": {"side": 1.0, "back": 0.0}}
