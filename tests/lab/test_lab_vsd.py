"""VSD (ProlificDreamer) in the lab's 3D experiment, fast path: the opt-in VSD variants over the
shipped VSD configs, threestudio's camera matrices for the LoRA's camera condition, the
prolificdreamer-system training terms (lambda_vsd loss_vsd + lambda_lora loss_lora, the LoRA and
camera embedding trained at the config's guidance learning rate) and a smoke run of the command
for every VSD variant on the committed lab models."""

import json
import math
import os
import sys

import pytest
import torch

from antijanus.core.guidance_config import VSDConfig
from antijanus.utils.errors import ConfigError
from janus_lab import fast3d
from janus_lab.experiment3d.experiment import Experiment
from janus_lab.experiment3d.settings import FastSettings, Representation, variant_vsd
from janus_lab.experiment3d.variants import (ALL_VARIANT_NAMES, VARIANT_NAMES, VARIANTS, VSD_VARIANT_NAMES,
                                             VSD_VARIANTS, block, guidance_config, load_config, variant_by_name)
from janus_lab.model_files import model_path

LAB_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "custom",
                           "janus_lab", "scripts")
PRIOR = model_path("prior")
PERP_NEG = {"vsd": False, "vsd-perp-neg": True, "vsd-dsds-clip": False, "vsd-perp-neg-dsds": True}
CLIPPING = {"vsd": False, "vsd-perp-neg": False, "vsd-dsds-clip": True, "vsd-perp-neg-dsds": True}


def _script():
    sys.path.insert(0, LAB_SCRIPTS)
    try:
        import lab_experiment_3d
    finally:
        sys.path.pop(0)
    return lab_experiment_3d


def test_vsd_variants_are_opt_in_and_named_in_the_unknown_variant_error(tmp_path):
    """The default variant list (the commands run before VSD existed) is unchanged; --variants
    accepts the VSD names; an unknown name's error lists them."""
    assert VSD_VARIANT_NAMES == tuple(PERP_NEG) and not set(VSD_VARIANT_NAMES) & set(VARIANT_NAMES)
    assert ALL_VARIANT_NAMES == VARIANT_NAMES + VSD_VARIANT_NAMES and len(VARIANTS) == 8
    assert tuple(Experiment(str(tmp_path)).variants) == VARIANT_NAMES
    with pytest.raises(ConfigError) as error:
        variant_by_name("vsd-esd")
    assert all(f"'{name}'" in str(error.value) for name in ALL_VARIANT_NAMES)
    script = _script()
    assert script.make_parser().parse_args([]).variants == list(VARIANT_NAMES)
    assert script.make_parser().parse_args(["--variants", "baseline", "vsd"]).variants == ["baseline", "vsd"]
    with pytest.raises(SystemExit):
        script.make_parser().parse_args(["--variants", "vsd-esd"])


def test_vsd_variants_run_their_shipped_configs_with_the_method_they_name():
    """VSDConfig on the lab prior with the LoRA branch on the same UNet; Perp-Neg on only in the
    perp-neg variants; clipping 2 -> 8 over the run's own steps where named; the configs' VSD
    terms (lambdas 1, AdamW at the guidance lr 1e-4)."""
    from antijanus.core.guidance import resolve_config

    steps = 37
    for variant in VSD_VARIANTS:
        cfg = load_config(variant.config, variant.overrides, steps)
        config = guidance_config(cfg, PRIOR)
        assert isinstance(config, VSDConfig), variant.name
        assert config.pretrained_model_name_or_path == config.pretrained_model_name_or_path_lora == PRIOR
        assert config.guidance_scale == 7.5 and config.guidance_scale_lora == 1.0
        assert bool(block(cfg, "system.prompt_processor")["use_perp_neg"]) == PERP_NEG[variant.name], variant.name
        clip = resolve_config(config).clip
        assert (clip is not None) == CLIPPING[variant.name], variant.name
        if clip is not None:
            assert (clip.start, clip.end, config.clip_end_step) == (2.0, 8.0, steps), variant.name
        vsd = variant_vsd(variant, FastSettings(steps=steps))
        assert (vsd.lambda_vsd, vsd.lambda_lora, vsd.lr, vsd.optimizer) == (1.0, 1.0, 1e-4, "AdamW")
    assert all(variant_vsd(v, FastSettings()) is None for v in VARIANTS)


def test_vsd_settings_need_threestudios_keys():
    loss = {"lambda_vsd": 1.0, "lambda_lora": 1.0}
    optimizer = {"name": "AdamW", "args": {"betas": [0.9, 0.99], "eps": 1e-15}, "params": {"guidance": {"lr": 1e-4}}}
    assert fast3d.VSDSettings.from_blocks(loss, optimizer).weight_decay is None  # torch's AdamW default
    for bad_loss, bad_optimizer, key in (({"lambda_vsd": 1.0}, optimizer, "lambda_lora"),
                                         (loss, dict(optimizer, name="SGD"), "optimizer.name"),
                                         (loss, dict(optimizer, params={}), "guidance.lr")):
        with pytest.raises(ConfigError, match=key):
            fast3d.VSDSettings.from_blocks(bad_loss, bad_optimizer)


def test_sampled_cameras_carry_threestudios_c2w_and_mvp():
    """c2w: columns right, up, -lookat and the position (the rays' origin; the central rays look
    along -z of the camera); mvp: the look-at point projects to the image centre, in front."""
    settings = fast3d.CameraSettings(height=16, width=16, batch_size=3)
    batch = fast3d.CameraSampler(settings, torch.Generator().manual_seed(0)).sample(5)
    assert isinstance(batch, fast3d.SampledCameras) and batch.c2w.shape == batch.mvp_mtx.shape == (3, 4, 4)
    rotation = batch.c2w[:, :3, :3]
    assert torch.allclose(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(batch.c2w[:, :3, 3], batch.rays_o[:, 0, 0]) and (batch.c2w[:, 3] == torch.tensor(
        [0.0, 0.0, 0.0, 1.0])).all()
    central = torch.nn.functional.normalize(batch.rays_d[:, 7:9, 7:9].mean((1, 2)), dim=-1)
    assert torch.allclose(central, -batch.c2w[:, :3, 2], atol=1e-5)
    position, center, up = torch.tensor([[2.0, 0.0, 0.5]]), torch.tensor([[0.1, -0.2, 0.0]]), torch.tensor([[0.0, 0, 1]])
    c2w, mvp = fast3d.camera_matrices(position, center, up, torch.tensor([60.0]), 1.0)
    clip = mvp[0] @ torch.cat([center[0], torch.ones(1)])
    assert clip[3] > 0 and torch.allclose(clip[:2] / clip[3], torch.zeros(2), atol=1e-5)
    focal, near, far = 1.0 / math.tan(math.radians(30.0)), 0.01, 100.0  # threestudio's get_projection_matrix
    projection = torch.tensor([[focal, 0, 0, 0], [0, -focal, 0, 0],
                               [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)], [0, 0, -1, 0]])
    assert torch.allclose(mvp[0] @ c2w[0], projection, atol=1e-4)  # mvp = projection x c2w^-1


def test_vsd_training_adds_the_lora_terms_and_trains_the_guidance_parameters():
    """fast3d.train with VSDSettings: the guidance gets the batch's c2w / mvp_mtx (and latents), the
    loss is lambda_vsd loss_vsd + lambda_lora loss_lora (+ the representation's regularisers), and
    the guidance's parameters step at the VSD lr; without VSDSettings nothing of this."""
    class FakeVSD:
        def __init__(self):
            self.weight = torch.nn.Parameter(torch.zeros(3))
            self.lora = self
            self.calls = []

        def parameters(self):
            return [self.weight]

        def set_run_max_steps(self, steps):
            pass

        def update_step(self, epoch, step):
            pass

        def __call__(self, rgb, prompt_utils, elevation, azimuth, distances, **kwargs):
            self.calls.append({k: tuple(v.shape) if torch.is_tensor(v) else v for k, v in kwargs.items()})
            return {"loss_vsd": rgb.square().mean(), "loss_lora": (self.weight - 1.0).square().sum()}

    settings = fast3d.VolumeSettings(resolution=8, samples=8, features="latent")
    rep = Representation.from_config(settings, max_steps=4)
    vsd = fast3d.VSDSettings(lambda_vsd=2.0, lambda_lora=0.5, lr=0.01)
    guidance = FakeVSD()
    result = fast3d.train(guidance, None, fast3d.make_scene(settings, 0), rep.cameras, rep.system, rep.material,
                          steps=3, seed=0, log_every=1, vsd=vsd)
    assert guidance.calls == [{"rgb_as_latents": True, "c2w": (1, 4, 4), "mvp_mtx": (1, 4, 4)}] * 3
    history = result.history
    assert "loss_sds" not in history and history["loss_lora"][0] == pytest.approx(0.5 * 3.0)
    assert history["loss"][0] == pytest.approx(history["loss_vsd"][0] + history["loss_lora"][0]
                                               + sum(history[k][0] for k in ("loss_orient", "loss_sparsity")
                                                     if k in history))
    # AdamW's first steps move each weight by about the lr towards 1 (decoupled decay 0.01 x lr)
    assert torch.allclose(guidance.weight.detach(), torch.full((3,), 0.03), atol=1e-3)
    assert history["lora/change"] == pytest.approx([0.01 * math.sqrt(3) * k for k in (1, 2, 3)], rel=1e-2)


def test_a_shared_guidance_scale_is_vsds_pretrained_branch_scale(tmp_path):
    """--guidance-scale replaces the pretrained branch's CFG scale (guidance_scale); the LoRA
    branch's guidance_scale_lora stays the config's; None keeps VSD's own 7.5."""
    for scale, expected in ((None, 7.5), (20.0, 20.0)):
        experiment = Experiment(str(tmp_path / str(scale)), variants=("vsd", "vsd-perp-neg"), prompts=("a bear",),
                                seeds=(0,), settings=FastSettings(guidance_scale=scale))
        for task in experiment.tasks(log=lambda m: None):
            assert isinstance(task.guidance, VSDConfig)
            assert (task.guidance.guidance_scale, task.guidance.guidance_scale_lora) == (expected, 1.0)


def test_vsd_fast_path_command_smoke(tmp_path):
    """lab_experiment_3d.py --variants <every VSD variant>: 3 steps, a 6-view orbit. Each run's record
    has loss_vsd / loss_lora, the LoRA moved from its start, Perp-Neg on only in the perp-neg
    variants, the clipping diagnostic where clipping is on; the worker's prior UNet has no LoRA
    hook left afterwards."""
    from janus_lab.experiment3d.runs import _WORKER

    script = _script()
    out = tmp_path / "lab-3d-vsd"
    args = ["--out", str(out), "--variants", *VSD_VARIANT_NAMES, "--prompts", "a smiling bear", "--seeds", "0",
            "--steps", "3", "--orbit-views", "6", "--jobs", "1", "--cameras", "prior", "--guidance-scale", "7.5"]
    assert script.main(args) == 0
    table = (out / "table.md").read_text()
    first_lora = set()
    for name in VSD_VARIANT_NAMES:
        assert f"| {name} | all prompts | 1 |" in table and (out / "grids" / f"{name}.png").exists()
        result = json.loads((out / "runs" / name / "a_smiling_bear" / "s0" / "result.json").read_text())
        history = result["history"]
        assert len(history["loss_vsd"]) == len(history["loss_lora"]) == 3 and "loss_sds" not in history
        assert all(math.isfinite(v) for v in history["loss_vsd"] + history["loss_lora"])
        assert 0.0 < history["lora/change"][0] < history["lora/change"][-1]  # the LoRA and camera embedding train
        assert ("dsds/clipped_fraction" in history) == CLIPPING[name], name
        assert result["vsd"]["lr"] == 1e-4 and result["metrics"]["n_frames"] == 6
        log = result["guidance_log"]
        assert any(("Perp-Neg on" if PERP_NEG[name] else "Perp-Neg off") in line for line in log), name
        assert any("VSD: LoRA branch on the pretrained UNet (shared)" in line for line in log), name
        first_lora.add(history["loss_lora"][0])
    assert len(first_lora) == 1  # one seed: the same LoRA start and draws for every VSD variant
    unet = _WORKER["backbone"].unet
    assert sum(len(m._forward_hooks) for m in unet.modules()) == 0 and unet.class_embedding is None
    report = [a for a in args if a not in ("--jobs", "1")] + ["--report-only"]
    assert script.main(report) == 0
