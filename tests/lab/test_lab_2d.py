"""The lab judge as a view classifier (janus_lab.classifier) in the metrics and the 2D
experiment, the 2D experiment's batched sampling and answer views (tools/view2d), and Perp-Neg's
Table 1 on the lab prior (janus_lab.experiment2d, custom/janus_lab/scripts/lab_view_experiment_2d.py), tiny."""

import os
import subprocess
import sys

import pytest
import torch

from janus_lab.classifier import JudgeViewClassifier
from janus_lab.experiment2d import LabViewSettings, format_table, run_lab_view_experiment, save_results
from janus_lab.model_files import model_path
from janus_lab.orbits import render_creature_orbit
from janus_lab.stats import wilson
from janus_lab.world import KINDS, VIEWS, Creature, render
from antijanus.prompting.dnp import SamplingSettings, load_sampler
from antijanus.tools.evaluate import MetricModels, MetricSettings, evaluate_folder
from antijanus.tools.view2d import ViewExperiment, run_view_experiment, sample_with_negatives
from antijanus.utils.errors import ConfigError
from antijanus.utils.imaging import to_pil
from helpers import one_thread

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
LAB_SCRIPTS = os.path.join(REPO, "custom", "janus_lab", "scripts")

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


pytestmark = pytest.mark.usefixtures(one_thread.__name__)  # the fixture, imported


@pytest.fixture(scope="module")
def sampler():
    return load_sampler(model_path("prior"), "cpu", half_precision=False)[0]


@pytest.fixture(scope="module")
def classifier():
    return JudgeViewClassifier.load()


def views_rendered():
    cameras = [(15.0, 0.0, "front"), (15.0, 90.0, "side"), (15.0, 180.0, "back"), (80.0, 20.0, "overhead")]
    creatures = [Creature("bear", smiling=True, striped=True)] * len(cameras)
    images = render(creatures, torch.tensor([c[0] for c in cameras]), torch.tensor([c[1] for c in cameras]))["image"]
    return images, [c[2] for c in cameras]


# ----------------------------------------------------------------------------- the classifier


def test_judge_view_classifier_scores_the_requested_views(classifier):
    images, truth = views_rendered()
    scores = classifier.view_scores(images, "ignored prompt", ["front", "side", "back"])
    assert scores.shape == (4, 3)
    assert [["front", "side", "back"][i] for i in scores[:3].argmax(1).tolist()] == truth[:3]
    full = classifier.view_scores(images, "", list(VIEWS))
    assert torch.allclose(full.sum(1), torch.ones(4), atol=1e-5)  # the judge's probabilities
    assert torch.equal(full[:, [VIEWS.index("back"), VIEWS.index("front")]],
                       classifier.view_scores(images, "", ["back", "front"]))
    assert classifier.judged_views(images) == truth
    with pytest.raises(ConfigError, match="views"):
        classifier.view_scores(images, "", ["front", "left"])
    with pytest.raises(ConfigError, match="judge"):
        type(classifier).load("/no/such/judge")


def test_judge_view_classifier_in_the_metrics_of_an_orbit(classifier, tmp_path):
    azimuths = torch.linspace(0.0, 360.0, 13)  # threestudio's test orbit, 30 degrees apart
    for i, frame in enumerate(render_creature_orbit(Creature("frog", striped=True), azimuths)):
        to_pil(frame).save(tmp_path / f"{i}.png")
    settings = MetricSettings(random_lpips=True, preprocess="none", clip_model="/no/such/clip", device="cpu")
    metrics, rows = evaluate_folder(str(tmp_path), "a frog", settings, MetricModels(settings, view_classifier=classifier))
    assert metrics["judge_front_in_region"] > 0.8 and metrics["judge_back_in_region"] > 0.5
    assert not any(k.startswith("clip_") for k in metrics)
    judged = [max(("front", "side", "back"), key=row.get) for row in rows]
    assert [judged[i] for i in (0, 3, 6, 9, 12)] == ["front", "side", "back", "side", "front"]  # 0, 90, ... 360


# ----------------------------------------------------------------------------- view2d hooks


def test_batched_seeds_give_the_images_of_one_seed_calls(sampler):
    encode = lambda t: sampler.backbone.encode_prompts(t, keep_encoder=True)  # noqa: E731
    uncond, positive = encode([""]), encode(["a bear, back view"])
    negatives = encode(["a bear, side view", "a bear, front view"])
    settings = SamplingSettings(steps=3, guidance_scale=7.5, seed=0)
    for method in ("vanilla", "cebm", "perp-neg"):
        batch = sample_with_negatives(sampler, positive, uncond, negatives, [1.0, 1.0], method, settings, seeds=[5, 7])
        one = [sample_with_negatives(sampler, positive, uncond, negatives, [1.0, 1.0], method,
                                     SamplingSettings(3, 7.5, seed)) for seed in (5, 7)]
        assert batch.shape == (2, 3, 32, 32)
        assert torch.allclose(batch, torch.cat(one), atol=1e-4), method
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def test_view_experiment_checks_answers_and_batch_size():
    with pytest.raises(ConfigError, match="answers"):
        ViewExperiment(prompts=["a bear"], views=("back",), answers=("front", "side")).validate()
    with pytest.raises(ConfigError, match="answers"):
        ViewExperiment(prompts=["a bear"], answers=("front", "side", "back", "back")).validate()
    with pytest.raises(ConfigError, match="batch_size"):
        ViewExperiment(prompts=["a bear"], batch_size=0).validate()
    ViewExperiment(prompts=["a bear"], answers=VIEWS, batch_size=4).validate()


def test_run_view_experiment_with_the_judge_among_all_its_regions(sampler, classifier):
    experiment = ViewExperiment(prompts=["a robot"], views=("side", "back"), seeds=[0, 1, 2],
                                settings=SamplingSettings(steps=2), answers=VIEWS, batch_size=2)
    result = run_view_experiment(sampler, classifier, experiment, progress=False)
    records = result["records"]
    assert len(records) == 2 * 3 * 3 and {r["seed"] for r in records} == {0, 1, 2}
    assert all(r["predicted"] in VIEWS for r in records)
    images = torch.stack([r["image"] for r in records])
    assert [r["predicted"] for r in records] == classifier.judged_views(images)  # argmax over all four
    for method, row in result["success"].items():
        for view, rate in row.items():
            chosen = [r for r in records if r["method"] == method and r["view"] == view]
            assert rate == sum(r["predicted"] == view for r in chosen) / len(chosen)


# ----------------------------------------------------------------------------- the lab experiment


def test_lab_view_experiment_table_rows_cells_and_files(sampler, classifier, tmp_path):
    settings = LabViewSettings(kinds=("frog", "bear"), views=("back",), seeds=(3, 4), negative_weights=(1.0, 2.0),
                               steps=2, batch_size=2, interpolation_steps=2)
    result = run_lab_view_experiment(sampler, classifier, settings, progress=False, log=lambda _: None)
    table, records = result["table"], result["records"]
    assert list(table) == ["vanilla", "cebm", "perp-neg", "cebm w=2", "perp-neg w=2"]
    assert len(records) == 5 * 2 * 2
    for label, groups in table.items():
        assert set(groups) == {"frog", "bear", "all"}
        mine = [r for r in records if r["row"] == label]
        assert sorted((r["kind"], r["seed"]) for r in mine) == [("bear", 3), ("bear", 4), ("frog", 3), ("frog", 4)]
        c = groups["all"]["back"]
        hits = sum(r["predicted"] == "back" for r in mine)
        assert (c["n"], c["hits"], c["ci95"]) == (4, hits, list(wilson(hits, 4)))
        assert c["kind_accuracy"] == sum(r["judged_kind"] == r["kind"] for r in mine) / 4
        assert sum(c["view_shares"].values()) == pytest.approx(1.0)
    assert {r["negative_weight"] for r in records if r["row"].endswith("w=2")} == {2.0}
    # the same seeds give the same initial noise: vanilla does not depend on the negatives
    assert format_table(table).splitlines()[0] == "| method (all, n = 4 per cell) | back view |"
    inter = result["interpolation"]
    assert inter["azimuths"] == [0.0, 180.0] and all(len(inter["judged"][k]) == 2 for k in ("frog", "bear"))
    paths = save_results(result, str(tmp_path))
    names = {os.path.basename(p) for p in paths}
    assert {"success.md", "success.json", "records.csv", "samples.pt", "interpolation.png",
            "grid-frog-perp-negw2.png"} <= names
    stored = torch.load(tmp_path / "samples.pt")
    assert stored["images"].dtype == torch.uint8 and stored["images"].shape == (20, 3, 32, 32)


def test_lab_view_settings_are_checked():
    with pytest.raises(ConfigError, match="kinds"):
        LabViewSettings(kinds=("cat",)).validate()
    with pytest.raises(ConfigError, match="seeds"):
        LabViewSettings(seeds=(1, 1)).validate()
    with pytest.raises(ConfigError, match="negative_weights"):
        LabViewSettings(negative_weights=(1.0, 1.0)).validate()
    with pytest.raises(ConfigError, match="views"):
        LabViewSettings(views=("overhead",)).validate()
    defaults = LabViewSettings().validate()
    assert (len(defaults.seeds), defaults.steps, defaults.guidance_scale, tuple(defaults.negative_weights)) == \
        (50, 50, 7.5, (1.0,))
    assert tuple(defaults.kinds) == KINDS


def test_lab_view_experiment_script_smoke(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(LAB_SCRIPTS, "lab_view_experiment_2d.py"), "--kinds", "frog",
               "--views", "side", "--methods", "vanilla", "perp-neg", "--seeds", "0", "--steps", "1",
               "--interpolation-steps", "0", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| method (all, n = 1 per cell) | side view |" in done.stdout
    assert (out / "success.md").exists() and (out / "records.csv").exists()
    bad = subprocess.run(command[:-2] + ["--kinds", "cat", "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "kinds" in bad.stderr
