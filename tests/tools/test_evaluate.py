"""Metrics of a finished run: the orbit rendered from the checkpoint with the launcher's --test,
the run's own prompt, the CLIP backends (transformers, open_clip)."""

import importlib.util
import json
import os
import shutil
import sys
import textwrap

import pytest
import torch
from PIL import Image

from antijanus.testing.tiny_models import make_clip
from antijanus.utils.imaging import to_pil
from antijanus.utils.errors import ConfigError
from antijanus.tools.evaluate import (
    MetricModels,
    MetricSettings,
    evaluate_folder,
    evaluate_run,
    find_checkpoint,
    orbit_folder,
    render_run_orbit,
    render_run_orbit_command,
    write_results,
)
from antijanus.tools.metrics import load_clip_scorer

# Stands in for threestudio's launch.py --test: records its arguments, renders data.n_test_views
# frames into <exp_root_dir>/<name>/<tag>/save/it7-test ($FAKE_RENDER_SHORT renders one less).
FAKE_TEST_LAUNCH = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    from PIL import Image
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    assert "--test" in sys.argv and args["timestamp"] == "''"
    run = os.path.join(args["exp_root_dir"], args["name"], args["tag"])
    json.dump(sys.argv[1:], open(os.path.join(run, "argv.json"), "w"))
    n = int(args["data.n_test_views"]) - ("FAKE_RENDER_SHORT" in os.environ)
    os.makedirs(os.path.join(run, "save", "it7-test"), exist_ok=True)
    texture = np.random.default_rng(0).integers(0, 255, (16, 48, 3)).astype(np.uint8)
    for i in range(n):
        Image.fromarray(np.roll(texture, i, axis=1)[:, :16]).save(os.path.join(run, "save", "it7-test", f"{i}.png"))
    sys.exit(int(os.environ.get("FAKE_RENDER_EXIT", "0")))
''')


@pytest.fixture
def trial(tmp_path):
    """A finished threestudio trial folder (parsed config, checkpoint, training's test renders)."""
    run = tmp_path / "outputs" / "dsds" / "a_corgi@20261123"
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "parsed.yaml").write_text("system:\n  prompt_processor:\n    prompt: a DSLR photo of a corgi\n")
    (run / "ckpts").mkdir()
    (run / "ckpts" / "last.ckpt").write_text("weights")
    (tmp_path / "launch.py").write_text(FAKE_TEST_LAUNCH)
    return run, [sys.executable, str(tmp_path / "launch.py")]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return make_clip(str(tmp_path_factory.mktemp("tiny-clip-eval")))


def test_orbit_is_rendered_from_the_checkpoint_into_its_own_trial(trial):
    run, launch = trial
    command = render_run_orbit_command(str(run), launch, n_views=5, elevation_deg=30.0)
    assert command[command.index("--config") + 1] == str(run / "configs" / "parsed.yaml")
    assert f"resume={run / 'ckpts' / 'last.ckpt'}" in command
    assert {"data.n_test_views=5", "data.eval_elevation_deg=30.0", f"exp_root_dir={run}", "name=metrics",
            "tag=orbit-n5-e30", "use_timestamp=false"} <= set(command)
    stale = run / "metrics" / "orbit-n5-e30" / "save" / "it7-test"
    stale.mkdir(parents=True)
    (stale / "9.png").write_bytes(b"left over from an interrupted render of another run")
    folder = render_run_orbit(str(run), launch, n_views=5, elevation_deg=30.0)
    assert folder == str(stale) and sorted(os.listdir(folder)) == [f"{i}.png" for i in range(5)]
    assert orbit_folder(str(run), 5, 30.0) == folder and orbit_folder(str(run), 5) is None
    # a run folder copied elsewhere with its times (rsync -a, cp -p) keeps its rendered orbit
    moved = run.parent / "copied"
    shutil.copytree(run, moved)
    assert orbit_folder(str(moved), 5, 30.0) == str(moved / "metrics" / "orbit-n5-e30" / "save" / "it7-test")


def test_incomplete_or_failed_renders_are_errors_not_metrics(trial, monkeypatch):
    run, launch = trial
    monkeypatch.setenv("FAKE_RENDER_SHORT", "1")
    with pytest.raises(RuntimeError, match="expected 4 renders.*found 3"):
        render_run_orbit(str(run), launch, n_views=4)
    assert orbit_folder(str(run), 4) is None
    monkeypatch.delenv("FAKE_RENDER_SHORT")
    monkeypatch.setenv("FAKE_RENDER_EXIT", "1")
    with pytest.raises(RuntimeError, match="failed \\(exit 1\\), see .*orbit-n4.log"):
        render_run_orbit(str(run), launch, n_views=4)


def test_checkpoint_choice(tmp_path):
    (tmp_path / "ckpts").mkdir()
    with pytest.raises(ConfigError, match="checkpoint.*no checkpoint"):
        find_checkpoint(str(tmp_path))
    for step in (900, 10000, 2000):
        (tmp_path / "ckpts" / f"epoch=0-step={step}.ckpt").write_text("w")
    assert find_checkpoint(str(tmp_path)).endswith("step=10000.ckpt")
    (tmp_path / "ckpts" / "last.ckpt").write_text("w")
    assert find_checkpoint(str(tmp_path)).endswith("last.ckpt")


def test_evaluate_run_uses_the_runs_prompt_and_reuses_its_orbit(trial, clip_folder):
    run, launch = trial
    settings = MetricSettings.from_dict(dict(n_views=6, clip_model=clip_folder, random_lpips=True,
                                             preprocess="none", distractors=["a cat"], device="cpu"))
    torch.manual_seed(0)
    metrics = evaluate_run(str(run), settings, launch=launch)
    written = json.load(open(run / "metrics.json"))
    assert written == metrics and metrics["n_views"] == 6 and metrics["a_lpips"] > 0
    folder = orbit_folder(str(run), 6)
    torch.manual_seed(0)  # the same random LPIPS weights
    explicit, rows = evaluate_folder(folder, "a DSLR photo of a corgi", settings)
    assert explicit == pytest.approx(metrics)
    assert len(rows) == 6 and len(open(run / "clip_per_azimuth.csv").read().strip().splitlines()) == 7
    # a second evaluation reuses the complete orbit of the same checkpoint (the launcher is not run)
    os.remove(os.path.join(folder, "..", "..", "argv.json"))
    evaluate_run(str(run), settings, launch=["false"])
    assert not os.path.exists(os.path.join(folder, "..", "..", "argv.json"))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"n_views": 1}, "metrics.n_views.*at least 2"),
        ({"prompt": "  "}, "metrics.prompt.*must not be empty"),
        ({"preprocess": "clip"}, "metrics.preprocess.*allowed values: 'none', 'dsds-notebook'"),
        ({"clip": "x"}, "`metrics.clip`.*unknown metrics key.*'clip_model'"),
    ],
)
def test_bad_metric_settings(data, message):
    with pytest.raises(ConfigError, match=message):
        MetricSettings.from_dict(data)


def test_run_without_config_or_renders_is_a_clear_error(tmp_path):
    settings = MetricSettings(random_lpips=True)
    with pytest.raises(ConfigError, match="`run`.*no save/it<step>-test folder"):
        evaluate_run(str(tmp_path), settings)


def test_clip_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match="clip_model.*model folder does not exist"):
        load_clip_scorer("/no/such/clip")
    # a hub id that cannot be reached (the tests run with HF_HUB_OFFLINE=1, no network) and a folder
    # of another kind: configuration errors naming the key and the likely cause, not raw OSErrors
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(ConfigError, match="`metrics.clip_model` = 'openai/clip-vit-base-patch32': could not be "
                                          "loaded as a CLIP model .*from the model hub .*no network"):
        load_clip_scorer("openai/clip-vit-base-patch32", key="metrics.clip_model")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="`--clip` = .*could not be loaded as a CLIP model .*from this folder"):
        load_clip_scorer(str(tmp_path), key="--clip")
    with pytest.raises(ConfigError, match="clip_model.*names no open_clip model"):
        load_clip_scorer("open_clip:")
    if importlib.util.find_spec("open_clip") is None:
        with pytest.raises(ConfigError, match="clip_model.*needs the `open_clip_torch` package"):
            load_clip_scorer("open_clip:ViT-B-32@laion2b_s34b_b79k")


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open_clip_torch not installed")
def test_open_clip_scorer_loads_a_local_checkpoint(tmp_path):
    """A tiny open_clip architecture (registered like any model config), random weights saved to
    a file, loaded back through the `open_clip:<arch>@<file>` spec: same similarities."""
    import open_clip  # optional: open_clip_torch (skipped without it)

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "antijanus-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "antijanus-tiny-clip.json"))
    torch.manual_seed(0)
    model = open_clip.create_model("antijanus-tiny-clip")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    scorer = load_clip_scorer(f"open_clip:antijanus-tiny-clip@{tmp_path / 'tiny.pt'}")
    assert all(torch.equal(a, b) for a, b in zip(scorer.model.state_dict().values(), model.state_dict().values()))
    images = torch.rand(3, 3, 40, 48)
    sims = scorer.similarity(images, ["a corgi", "a cat"])
    assert sims.shape == (3, 2) and bool(((sims >= -1) & (sims <= 1)).all())
    pixels = torch.stack([scorer.preprocess(to_pil(i)) for i in images])
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("antijanus-tiny-clip")(
            ["a corgi", "a cat"])), dim=-1)
    assert torch.allclose(sims, image @ text.T, atol=1e-5)
    with pytest.raises(ConfigError, match="open_clip checkpoint file does not exist"):
        load_clip_scorer(f"open_clip:antijanus-tiny-clip@{tmp_path / 'missing.pt'}")
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        load_clip_scorer("open_clip:ViT-Q-99")


class BrightnessJudge:
    """A stand-in for a trained view classifier (the ViewClassifier shape): "front" for bright
    renders, "back" for dark ones, "side" in between."""

    name = "judge"

    def __init__(self):
        self.calls = []

    def view_scores(self, images, prompt, views):
        self.calls.append((len(images), prompt, tuple(views)))
        brightness = images.mean(dim=(1, 2, 3))
        target = {"front": 1.0, "side": 0.5, "back": 0.0}
        return torch.stack([-(brightness - target[v]).abs() for v in views], dim=1)


def test_a_view_classifier_plugs_into_the_metrics_in_place_of_clip(tmp_path):
    """The per-azimuth view table and the in-region means come from the given classifier; CLIP is
    not even loaded when nothing needs it (no distractors)."""
    n = 8  # azimuths 0 .. 360: bright front, grey side, dark back
    levels = [255, 128, 128, 0, 0, 128, 128, 255]
    for i, level in enumerate(levels):
        Image.new("RGB", (16, 16), (level,) * 3).save(tmp_path / f"{i}.png")
    settings = MetricSettings(random_lpips=True, preprocess="none", clip_model="/no/such/clip", device="cpu",
                              front_half_width=30.0, back_half_width=30.0)
    judge = BrightnessJudge()
    models = MetricModels(settings, view_classifier=judge)
    metrics, rows = evaluate_folder(str(tmp_path), "a corgi", settings, models)
    assert judge.calls == [(n, "a corgi", ("front", "side", "back"))]
    assert metrics["judge_front_in_region"] == pytest.approx(0.0)  # azimuths 0 and 360: exact front
    assert metrics["judge_back_in_region"] == pytest.approx(0.0)  # 154 and 206 degrees: black
    assert not any(k.startswith("clip_") for k in metrics)
    assert [max(("front", "side", "back"), key=row.get) for row in rows] == [
        "front", "side", "side", "back", "back", "side", "side", "front"]
    write_results(str(tmp_path / "out"), metrics, rows, settings, judge.name)
    assert (tmp_path / "out" / "judge_per_azimuth.csv").exists() and (tmp_path / "out" / "metrics.json").exists()
