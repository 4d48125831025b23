import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from antijanus.tools.evaluate import MetricModels, MetricSettings
from antijanus.utils.errors import ConfigError
from antijanus.tools.metrics import (
    LPIPS,
    CLIPScorer,
    a_lpips,
    load_orbit,
    per_azimuth_clip,
    r_precision,
    view_of_azimuth,
)
from helpers import REPO  # noqa: E402


@pytest.fixture(scope="module", params=["vgg", "alex"])
def lpips(request):
    torch.manual_seed(0)
    return LPIPS(request.param, random_weights=True)


def orbit(n=12, size=32, seed=0):
    """A smooth orbit: a fixed random texture rolled a little more at every frame."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.nn.functional.avg_pool2d(torch.rand(1, 3, size, 2 * size, generator=g), 5, 1, 2)
    return torch.cat([torch.roll(texture, shifts=i, dims=-1)[..., :size] for i in range(n)])


def test_a_lpips_of_identical_frames_is_zero(lpips):
    frames = orbit()[:1].expand(10, -1, -1, -1)
    mean, values = a_lpips(frames, lpips)
    assert mean == 0.0 and values.shape == (9,)


def test_a_lpips_grows_with_a_planted_discontinuity(lpips):
    smooth = orbit()
    broken = smooth.clone()
    broken[6] = orbit(seed=1)[6]  # a different object at one azimuth
    smooth_mean, smooth_values = a_lpips(smooth, lpips)
    broken_mean, broken_values = a_lpips(broken, lpips)
    assert broken_mean > smooth_mean
    assert broken_values.argmax() in (5, 6)  # the pairs touching the planted frame
    # the D-SDS notebook's preprocessing (224 crops): a shorter orbit keeps the test fast
    assert a_lpips(broken[4:8], lpips, preprocess="dsds-notebook")[0] > \
        a_lpips(smooth[4:8], lpips, preprocess="dsds-notebook")[0]


def test_renders_too_small_for_the_network_are_a_clear_error(lpips):
    small = torch.rand(3, 3, 12, 12)
    with pytest.raises(ConfigError, match="too small for LPIPS-.*dsds-notebook"):
        a_lpips(small, lpips)
    assert a_lpips(small, lpips, preprocess="dsds-notebook")[0] > 0  # resized to 224 crops


def test_lpips_loads_torchvision_and_lpips_weight_files(tmp_path, lpips):
    vgg = {f"features.{k}": v for k, v in lpips.features.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(1)  # torchvision's file has the classifier too
    lins = {f"lin{i}.model.1.weight": lin.weight for i, lin in enumerate(lpips.lins)}
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    torch.save(lins, tmp_path / "vgg.pth")
    loaded = LPIPS(lpips.net, str(tmp_path / "vgg16-397923af.pth"), str(tmp_path / "vgg.pth"))
    x, y = orbit()[:2], orbit()[2:4]
    assert torch.allclose(loaded(x, y), lpips(x, y))
    # the errors name the real keys (MetricSettings / the sweep's metrics block) and the way out
    with pytest.raises(ConfigError, match="`lpips_backbone` = .*missing.pth.*not found.*random_lpips: true"):
        LPIPS(lpips.net, str(tmp_path / "missing.pth"), str(tmp_path / "vgg.pth"))
    with pytest.raises(ConfigError, match="`lpips_lin` = .*missing.pth.*weights/v0.1"):
        LPIPS(lpips.net, str(tmp_path / "vgg16-397923af.pth"), str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="`metrics.lpips_backbone` = .*missing.pth"):
        MetricModels(MetricSettings(lpips_net=lpips.net, lpips_backbone=str(tmp_path / "missing.pth"),
                                    lpips_lin=str(tmp_path / "vgg.pth"), device="cpu"))
    with pytest.raises(ConfigError, match="lpips_net.*allowed values: 'vgg', 'alex'"):
        LPIPS("squeeze", random_weights=True)


def test_load_orbit_reads_threestudio_test_folders(tmp_path):
    for i in range(12):  # RGB | normal | opacity panels, numbered 0..11 ("10" after "9")
        panel = torch.full((16, 48, 3), i * 20, dtype=torch.uint8)
        panel[:, 16:] = 255
        Image.fromarray(panel.numpy()).save(tmp_path / f"{i}.png")
    frames, azimuths = load_orbit(str(tmp_path))
    assert frames.shape == (12, 3, 16, 16)
    assert torch.allclose(frames[:, 0, 0, 0] * 255, torch.arange(12) * 20.0)
    assert azimuths[0] == 0 and azimuths[-1] == 360
    assert view_of_azimuth(torch.tensor([0.0, 90.0, 180.0, 350.0])) == ["front", "side", "back", "front"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The tiny CLIP as the README's CPU path builds it: scripts/make_tiny_models.py."""
    out = tmp_path_factory.mktemp("tiny-models")
    script = os.path.join(REPO, "scripts", "make_tiny_models.py")
    result = subprocess.run([sys.executable, script, str(out), "--only", "clip"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def clip(tiny_models):
    return CLIPScorer(str(tiny_models / "clip"))


def test_make_tiny_models_writes_a_clip_in_the_hub_layout(tiny_models):
    """openai/clip-vit-base-patch32's files: model config + weights, preprocessor and tokenizer side
    by side, loadable by CLIPModel / CLIPProcessor (nothing else in the folder)."""
    folder = tiny_models / "clip"
    names = set(os.listdir(folder))
    assert {"config.json", "preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    assert names & {"model.safetensors", "pytorch_model.bin"} and not any(n.startswith("_") for n in names)
    assert all(os.path.isfile(folder / n) for n in names)
    assert isinstance(CLIPModel.from_pretrained(str(folder)), CLIPModel)
    assert CLIPProcessor.from_pretrained(str(folder)).tokenizer("a corgi").input_ids[-1] == \
        CLIPModel.from_pretrained(str(folder)).config.text_config.eos_token_id


def test_per_azimuth_clip_table_and_r_precision(clip):
    frames, azimuths = orbit(n=8), torch.linspace(0, 360, 8)
    phrases = {"front": "front view", "side": "side view", "back": "back view"}
    table = per_azimuth_clip(clip, frames, azimuths, "a corgi", phrases)
    assert len(table) == 8 and [row["azimuth"] for row in table] == azimuths.tolist()
    assert all(-1.0 <= row[v] <= 1.0 for row in table for v in phrases)
    score = r_precision(clip, frames, "a corgi", ["a cat", "a car"])
    assert 0.0 <= score <= 1.0
    sims = clip.similarity(frames, ["a corgi", "a cat", "a car"])
    assert score == pytest.approx(float((sims.argmax(1) == 0).float().mean()))
    with pytest.raises(ConfigError, match="distractors"):
        r_precision(clip, frames, "a corgi", [])


def test_metrics_script_on_a_synthetic_run(tmp_path, clip):
    run = tmp_path / "trial"
    renders = run / "save" / "it3-test"
    renders.mkdir(parents=True)
    for i, frame in enumerate(orbit(n=6)):
        Image.fromarray((frame.permute(1, 2, 0) * 255).byte().numpy()).save(renders / f"{i}.png")
    script = os.path.join(REPO, "scripts", "run_metrics.py")
    clip_folder = clip.model.name_or_path
    # the README's CPU metrics options: the tiny CLIP, random LPIPS weights, the CPU
    result = subprocess.run([sys.executable, script, str(run), "--no-render", "--prompt", "a corgi", "--clip",
                             clip_folder, "--random-lpips", "--preprocess", "none", "--distractors", "a cat",
                             "--device", "cpu"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.load(open(run / "metrics.json"))
    assert metrics["n_views"] == 6 and metrics["a_lpips"] > 0 and 0 <= metrics["clip_r_precision"] <= 1
    assert len(open(run / "clip_per_azimuth.csv").read().strip().splitlines()) == 1 + 6
