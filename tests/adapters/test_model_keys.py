"""Every model key of a config, set from one folder (--models) and checked before training:
a model that cannot be loaded stops the run with one message naming the full key."""

import os

import pytest
from omegaconf import OmegaConf

import antijanus.adapters  # noqa: F401  (registers the modules: their defaults name models too)
from antijanus.adapters.model_keys import check_launch_command, model_keys, models_overrides, unloadable_models
from helpers import REPO  # noqa: E402

CONFIGS = os.path.join(REPO, "configs")


def config(name, *overrides):
    return OmegaConf.merge(OmegaConf.load(os.path.join(CONFIGS, name)), OmegaConf.from_cli(list(overrides)))


def test_model_keys_of_each_processor_kind():
    assert model_keys(config("perp-neg-nerf-sd.yaml")) == {
        "system.guidance.pretrained_model_name_or_path": ("stabilityai/stable-diffusion-2-1-base", "sd"),
        "system.prompt_processor.pretrained_model_name_or_path": ("stabilityai/stable-diffusion-2-1-base", "sd")}
    assert model_keys(config("dsds-full-nerf-sd.yaml"))["system.prompt_processor.debias_model"] == (
        "bert-base-uncased", "bert")
    assert model_keys(config("dnp-nerf-sd.yaml"))["system.prompt_processor.captioner"][1] == "blip"
    assert {f for _, f in model_keys(config("dsds-nerf-if.yaml")).values()} == {"if"}  # no debiasing: no BERT
    assert model_keys(config("dsds-nerf-if.yaml", "system.prompt_processor.use_prompt_debiasing=true")
                      )["system.prompt_processor.debias_model"][1] == "bert"
    assert "system.prompt_processor.captioner" not in model_keys(
        config("dnp-nerf-sd.yaml", "system.prompt_processor.negative_prompt=blurry"))  # given: no captioner


def test_the_processor_follows_the_guidance_model_in_the_shipped_configs():
    keys = model_keys(config("dsds-full-nerf-sd.yaml", "system.guidance.pretrained_model_name_or_path=/m/sd"))
    assert keys["system.prompt_processor.pretrained_model_name_or_path"][0] == "/m/sd"


def test_models_sets_each_key_that_has_a_folder_and_says_which_stay(tmp_path):
    os.makedirs(tmp_path / "sd")
    found, lines = models_overrides(config("dsds-full-nerf-sd.yaml"), str(tmp_path))
    assert found == [f"system.guidance.pretrained_model_name_or_path={tmp_path / 'sd'}",
                     f"system.prompt_processor.pretrained_model_name_or_path={tmp_path / 'sd'}"]
    assert any("system.prompt_processor.debias_model stays 'bert-base-uncased'" in line and "no bert/" in line
               for line in lines)
    with pytest.raises(FileNotFoundError, match="--models"):
        models_overrides(config("dsds-full-nerf-sd.yaml"), str(tmp_path / "missing"))


def test_unloadable_models_name_the_full_key_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    problems = unloadable_models(config("dsds-full-nerf-sd.yaml", f"system.guidance.pretrained_model_name_or_path={tmp_path}"))
    assert len(problems) == 1 and problems[0].startswith("system.prompt_processor.debias_model='bert-base-uncased'")
    assert "HF_HUB_OFFLINE" in problems[0] and "--models DIR with DIR/bert" in problems[0]
    missing = unloadable_models(config("perp-neg-nerf-sd.yaml", "system.guidance.pretrained_model_name_or_path=/no/such/sd"))
    assert missing and all("no such folder" in p for p in missing)


def test_launch_train_stops_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["launch.py", "--config", os.path.join(CONFIGS, "perp-neg-nerf-sd.yaml"), "--train", "--gpu", "0",
            "system.prompt_processor.prompt=a corgi"]
    with pytest.raises(SystemExit) as stopped:
        check_launch_command(argv)
    assert stopped.value.code == 2
    assert "system.guidance.pretrained_model_name_or_path='stabilityai/stable-diffusion-2-1-base'" in capsys.readouterr().err
    check_launch_command(argv + [f"system.guidance.pretrained_model_name_or_path={tmp_path}"])  # local: goes on
    check_launch_command(["launch.py", "--config", argv[2], "--test"])  # only --train is checked
    check_launch_command(["pytest"])
