"""`perp-neg-vsd-guidance`, against the real threestudio when importable, else the stub: registered,
every key of threestudio's `stable-diffusion-vsd-guidance`, the outputs prolificdreamer-system
uses, the LoRA in the module's parameters (the optimizer group `guidance`) and state dict
(checkpoints) under threestudio's names, the samples as prolificdreamer-system asks for them, and
the model keys of a VSD config."""

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.adapters.model_keys import model_keys
from antijanus.utils.errors import ConfigError

from helpers import make_prompt_output

#: threestudio's stable-diffusion-vsd-guidance keys (HEAD 28d9d80) with their defaults.
THREESTUDIO_VSD_KEYS = dict(
    pretrained_model_name_or_path="stabilityai/stable-diffusion-2-1-base",
    pretrained_model_name_or_path_lora="stabilityai/stable-diffusion-2-1",
    enable_memory_efficient_attention=False, enable_sequential_cpu_offload=False,
    enable_attention_slicing=False, enable_channels_last_format=False, guidance_scale=7.5,
    guidance_scale_lora=1.0, grad_clip=None, half_precision_weights=True, lora_cfg_training=True,
    lora_n_timestamp_samples=1, min_step_percent=0.02, max_step_percent=0.98, sqrt_anneal=False,
    trainer_max_steps=25000, use_img_loss=False, view_dependent_prompting=True,
    camera_condition_type="extrinsics", weights=None,
)
#: keys whose default differs on purpose (None: resolved the same way at run time)
DIFFERENT_DEFAULTS = {"enable_channels_last_format": None, "trainer_max_steps": None}
BATCH = dict(  # what threestudio's random-camera data module gives a system's training_step
    elevation=torch.tensor([0.0, 15.0]), azimuth=torch.tensor([-100.0, 170.0]),
    camera_distances=torch.tensor([2.0, 2.0]), c2w=torch.randn(2, 4, 4), mvp_mtx=torch.randn(2, 4, 4),
    rays_o=torch.zeros(2, 4, 4, 3), light_positions=torch.zeros(2, 3), height=16, width=16,
)


@pytest.fixture(scope="module")
def guidance(tiny_sd):
    return threestudio.find("perp-neg-vsd-guidance")({
        "pretrained_model_name_or_path": tiny_sd, "pretrained_model_name_or_path_lora": tiny_sd,
        "half_precision_weights": False})


def test_every_threestudio_vsd_key_exists_with_its_default():
    cls = threestudio.find("perp-neg-vsd-guidance")
    defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    for key, value in THREESTUDIO_VSD_KEYS.items():
        assert key in defaults, key
        assert defaults[key] == DIFFERENT_DEFAULTS.get(key, value), key
    if "stable-diffusion-vsd-guidance" in threestudio.__modules__:  # the real threestudio
        theirs = {f.name for f in dataclasses.fields(threestudio.find("stable-diffusion-vsd-guidance").Config)}
        assert theirs <= set(defaults)


def test_a_step_gives_prolificdreamers_outputs_and_trains_the_lora(guidance):
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    out = guidance(rgb, make_prompt_output(), **BATCH, rgb_as_latents=False)
    assert {"loss_vsd", "loss_lora", "grad_norm", "min_step", "max_step"} <= set(out)
    assert not any(k.startswith("loss_") for k in set(out) - {"loss_vsd", "loss_lora"})
    (out["loss_vsd"] + out["loss_lora"]).backward()
    assert rgb.grad.abs().sum() > 0
    assert all(p.grad is not None for p in guidance.parameters())
    guidance.do_update_step(0, 10)
    assert guidance.min_step == 20 and guidance.max_step == 980


def test_the_lora_is_the_modules_parameters_and_state_dict_under_threestudios_names(guidance):
    assert isinstance(guidance, nn.Module)
    lora = guidance.engine.lora
    assert {id(p) for p in guidance.parameters()} == {id(p) for p in lora.parameters()}
    keys = list(guidance.state_dict())
    assert keys and all(k.startswith(("lora_layers.layers.", "camera_embedding.module.")) for k in keys)
    assert "lora_layers.layers.0.to_q_lora.down.weight" in keys
    assert "camera_embedding.module.linear_1.weight" in keys
    # a checkpoint round trip restores the LoRA (threestudio's resume loads the module's state dict)
    saved = {k: v.clone() for k, v in guidance.state_dict().items()}
    with torch.no_grad():
        for p in guidance.parameters():
            p.add_(1.0)
    guidance.load_state_dict(saved)
    assert all(torch.equal(v, saved[k]) for k, v in guidance.state_dict().items())
    # the system's optimizer group `guidance` (threestudio's get_parameters: module.parameters())
    optimizer = torch.optim.Adam([{"params": guidance.parameters(), "name": "guidance", "lr": 1e-4}])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in lora.parameters())


def test_samples_take_the_systems_batch_as_prolificdreamer_passes_it(guidance, monkeypatch):
    """prolificdreamer-system's visualize_samples: sample(prompt_utils, **batch, seed=step)[0] and
    sample_lora(prompt_utils, **batch)[0], HWC images in [0, 1]; the LoRA's camera is the batch's
    c2w (camera_condition_type extrinsics)."""
    import antijanus.core.vsd_guidance as module  # to patch its step count

    monkeypatch.setattr(module, "VSD_SAMPLE_STEPS", 3)  # threestudio's 25; fewer here for time
    prompts = make_prompt_output()
    size = guidance.engine.backbone.image_size
    for images in (guidance.sample(prompts, **BATCH, seed=4), guidance.sample_lora(prompts, **BATCH)):
        assert images.shape == (2, size, size, 3) and 0 <= images.min() and images.max() <= 1
    expected = guidance.engine.sample_lora(prompts, BATCH["c2w"].reshape(2, 16), seed=0)
    assert torch.equal(guidance.sample_lora(prompts, **BATCH), expected)
    assert torch.equal(guidance.sample(prompts, **BATCH, seed=4), guidance.sample(prompts, **BATCH, seed=4))


def test_bad_keys_fail_at_configuration(tiny_sd):
    cls = threestudio.find("perp-neg-vsd-guidance")
    with pytest.raises(ConfigError, match="use_sjc"):
        cls({"pretrained_model_name_or_path": tiny_sd, "use_sjc": True})
    with pytest.raises(ConfigError, match="camera_condition_type"):
        cls({"pretrained_model_name_or_path": tiny_sd, "camera_condition_type": "pose"})


def test_the_lora_model_is_a_model_key_of_a_vsd_config():
    for kind in ("perp-neg-vsd-guidance", "stable-diffusion-vsd-guidance"):
        cfg = OmegaConf.create({"system": {"guidance_type": kind, "guidance": {
            "pretrained_model_name_or_path_lora": "stabilityai/stable-diffusion-2-1"}}})
        keys = model_keys(cfg)
        assert keys["system.guidance.pretrained_model_name_or_path_lora"] == ("stabilityai/stable-diffusion-2-1", "sd")
    cfg = OmegaConf.create({"system": {"guidance_type": "perp-neg-sds-guidance", "guidance": {}}})
    assert "system.guidance.pretrained_model_name_or_path_lora" not in model_keys(cfg)
