"""The lab's 3D experiment, fast path (janus_lab/fast3d/, janus_lab/prompt_output.py,
janus_lab/experiment3d/, custom/janus_lab/scripts/lab_experiment_3d.py): cameras in threestudio's convention, the volume renderer, prompt
outputs as the processors make them, the variants as the shipped configs set them, and a smoke
run of the whole command on the committed lab models. The processors' outputs are compared
with threestudio's real processors in the threestudio tier."""

import dataclasses
import json
import math
import os
import sys

import pytest
import torch

from janus_lab.locations import SWEEP_CONFIG_DIR
from janus_lab import fast3d
from janus_lab.experiment3d.experiment import Experiment
from janus_lab.experiment3d.lab_models import LabModels, load_backbone
from janus_lab.experiment3d.settings import FastSettings, Representation
from janus_lab.experiment3d.variants import (VARIANTS, block, guidance_config, lab_prompts, load_config,
                                             variant_by_name)
from janus_lab.model_files import model_path
from janus_lab.prompt_output import (DIRECTION_ORDER, PromptEncoder, build_prompt_output,
                                     processor_settings)
from janus_lab.volume_orbits import kind_of
from antijanus.utils.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
LAB_SCRIPTS = os.path.join(REPO, "custom", "janus_lab", "scripts")

PRIOR = model_path("prior")
SWEEP = os.path.join(SWEEP_CONFIG_DIR, "janus-3d-sweep.yaml")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(PRIOR)


@pytest.fixture(scope="module")
def encode(backbone):
    return PromptEncoder(backbone)


# ----------------------------------------------------------------------------- cameras


def test_orbit_rays_are_the_worlds_threestudio_cameras():
    """Unperturbed cameras give exactly the rays of lab.world (threestudio's look-at frame and
    pinhole directions), so the volume is seen as the world's objects are."""
    from janus_lab.world import camera_rays

    azimuths = torch.tensor([0.0, 45.0, 170.0, -90.0])
    cams = fast3d.orbit_cameras(azimuths, 15.0, 2.0, 70.0, resolution=8)
    origin, directions = camera_rays(torch.full((4,), 15.0), azimuths, torch.full((4,), 2.0),
                                     torch.full((4,), 70.0), 8)
    assert torch.allclose(cams.rays_o[:, 0, 0], origin, atol=1e-6)
    assert torch.allclose(cams.rays_d, directions, atol=1e-6)
    assert torch.allclose(cams.light_positions, origin)  # threestudio's test light: at the camera


def test_training_cameras_follow_the_config_ranges():
    settings = fast3d.CameraSettings.from_data_block(load_config("perp-neg-nerf-sd.yaml").data)
    assert (settings.height, settings.width) == (32, 32)  # the lab's resolution, not the config's 64
    assert settings.camera_distance_range == (1.5, 2.0) and settings.elevation_range == (-10, 45)
    sampler = fast3d.CameraSampler(settings, torch.Generator().manual_seed(0))
    first = sampler.sample(0)  # threestudio's progressive_view at step 0: the front at eval elevation
    assert first.azimuth.item() == 0.0 and first.elevation.item() == pytest.approx(settings.eval_elevation_deg)
    cams = [sampler.sample(step) for step in range(1, 400)]
    elevation = torch.cat([c.elevation for c in cams])
    azimuth = torch.cat([c.azimuth for c in cams])
    distance = torch.cat([c.camera_distances for c in cams])
    assert elevation.min() >= -10 and elevation.max() <= 45 and azimuth.abs().max() <= 180
    assert distance.min() >= 1.5 and distance.max() <= 2.0
    assert (azimuth.abs() < 45).float().mean() == pytest.approx(0.25, abs=0.07)  # uniform azimuth
    # positions perturbed by at most camera_perturb per axis; rays unit length
    ideal = fast3d.spherical(cams[0].elevation, cams[0].azimuth, cams[0].camera_distances)
    assert (cams[0].positions - ideal).abs().max() <= settings.camera_perturb + 1e-6
    assert torch.allclose(cams[0].rays_d.norm(dim=-1), torch.ones(1, 32, 32))
    again = fast3d.CameraSampler(settings, torch.Generator().manual_seed(0))
    assert torch.equal(again.sample(0).rays_d, first.rays_d)  # one generator, deterministic


def test_unsupported_camera_and_material_settings_are_errors():
    from antijanus.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="light_sample_strategy"):
        fast3d.CameraSettings.from_data_block({"light_sample_strategy": "magic3d"})
    with pytest.raises(ConfigError, match="soft_shading"):
        fast3d.Material.from_block({"soft_shading": True})
    with pytest.raises(ConfigError, match="lambda_emptiness"):
        fast3d.SystemSettings.from_blocks({"lambda_emptiness": 5.0}, {})


# ----------------------------------------------------------------------------- the volume


def test_blob_renders_its_albedo_in_front_of_the_background_with_outward_normals():
    volume = fast3d.VoxelVolume(fast3d.VolumeSettings(resolution=24, samples=48))
    background = fast3d.EnvironmentBackground()
    with torch.no_grad():
        volume.grid[:, 1] = 4.0  # albedo red
        volume.grid[:, 2:] = -4.0
    cams = fast3d.orbit_cameras(torch.tensor([0.0, 120.0]), 10.0, 2.0, 60.0, resolution=16)
    out = fast3d.render(volume, background, cams, fast3d.Material(), "albedo")
    centre, corner = out["comp_rgb"][:, 8, 8], out["comp_rgb"][:, 0, 0]
    alpha = out["opacity"][:, 8, 8]
    assert alpha.min() > 0.98 and out["opacity"][:, 0, 0].max() < 1e-3  # the blob: radius 0.5, optical depth ~5
    red = torch.sigmoid(torch.tensor([4.0, -4.0, -4.0]))
    assert torch.allclose(centre, alpha * red + (1 - alpha) * background(cams.rays_d[:, 8, 8]), atol=1e-4)
    assert torch.allclose(corner, background(cams.rays_d[:, 0, 0]), atol=1e-4)
    points = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.2, 0.1], [0.1, 0.1, -0.25]])
    normal = volume(points)["normal"]  # flat grid: -grad(density) is the blob's outward direction
    assert torch.allclose(normal, torch.nn.functional.normalize(points, dim=-1), atol=1e-5)
    # outward normals face the camera where the weights are: a small orientation penalty (only
    # the little weight left on the blob's far side, whose normals point away)
    assert 0.0 < fast3d.orientation_loss(out).item() < 0.02


def test_coarse_levels_add_upsampled_grids_that_train_low_frequencies():
    """The pyramid volume: the sampled logits are the finest grid plus each coarse level
    trilinearly upsampled; a constant coarse level shifts every point by its value; the coarse
    levels get gradients of their own; bad levels are a ConfigError naming the key."""
    settings = fast3d.VolumeSettings(resolution=12, coarse_levels=(3, 6), samples=8)
    volume = fast3d.VoxelVolume(settings)
    assert [tuple(p.shape) for p in volume.parameters()] == [(1, 4, 12, 12, 12), (1, 4, 3, 3, 3), (1, 4, 6, 6, 6)]
    points = torch.rand(50, 3) * 1.6 - 0.8
    before = volume(points)
    with torch.no_grad():
        volume.coarse[0][:, 1] = 2.0  # a constant red logit on the 3^3 level
        volume.grid[:, 1] = -0.5
    after = volume(points)
    assert torch.allclose(after["albedo"][:, 0], torch.sigmoid(torch.tensor(1.5)).expand(50), atol=1e-5)
    assert torch.allclose(after["density"], before["density"])  # density untouched
    with torch.no_grad():  # a linear density ramp on the 6^3 level: its trilinear upsampling is the same ramp
        z = torch.linspace(-1, 1, 6)
        volume.coarse[1][:, 0] = z[:, None, None].expand(6, 6, 6)
    composed = volume.composed()[0, 0]
    assert torch.allclose(composed[:, 5, 5], torch.linspace(-1, 1, 12), atol=1e-5)
    loss = volume(points)["density"].sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in volume.parameters())
    # the coarse levels collect the gradient of every fine voxel they cover
    assert volume.coarse[0].grad[:, 0].abs().max() > volume.grid.grad[:, 0].abs().max()
    for bad in ((12,), (1,), (13,)):
        with pytest.raises(ConfigError, match="volume.coarse_levels"):
            fast3d.VolumeSettings(resolution=12, coarse_levels=bad)
    with pytest.raises(ConfigError, match="volume.resolution"):
        fast3d.VolumeSettings(resolution=1)


def test_orbit_of_an_empty_volume_is_the_background_and_shading_follows_the_material():
    volume = fast3d.VoxelVolume(fast3d.VolumeSettings(resolution=8, samples=16))
    with torch.no_grad():
        volume.grid[:, 0] = -100.0
    scene = fast3d.Scene(volume, fast3d.EnvironmentBackground())
    frames, opacity = fast3d.render_orbit(scene, torch.tensor([0.0, 90.0, 180.0]), 15.0, 2.0, 70.0,
                                          fast3d.Material(ambient_only_steps=10), global_step=5, resolution=8)
    assert frames.shape == (3, 3, 8, 8) and opacity.max() < 1e-6
    material = fast3d.Material(ambient_only_steps=10)
    assert material.test_shading(5) == "albedo" and material.test_shading(10) == "diffuse"
    import random

    shadings = {material.training_shading(50, random.Random(i)) for i in range(200)}
    assert shadings == {"albedo", "textureless", "diffuse"}
    assert {material.training_shading(3, random.Random(i)) for i in range(50)} == {"albedo"}


def test_representation_comes_from_the_nerf_config():
    rep = Representation.from_config(fast3d.VolumeSettings(), max_steps=100)
    cfg = load_config("perp-neg-nerf-sd.yaml")
    assert rep.system.lambda_sparsity == cfg.system.loss.lambda_sparsity
    assert list(rep.system.lambda_orient) == list(cfg.system.loss.lambda_orient)
    assert rep.system.background_lr == cfg.system.optimizer.params.background.lr
    assert rep.material.ambient_only_steps == cfg.system.material.ambient_only_steps
    assert rep.volume.density_blob_scale == cfg.system.geometry.density_blob_scale
    assert (rep.orbit_distance, rep.orbit_fovy) == (cfg.data.eval_camera_distance, cfg.data.eval_fovy_deg)


# ----------------------------------------------------------------------------- prompts


def test_stock_processor_output(encode):
    from antijanus.core.prompts import direction_indices

    out = build_prompt_output("stable-diffusion-prompt-processor", {"front_threshold": 45.0}, "a smiling bear",
                              encode)
    assert out.prompts_vd == [f"a smiling bear, {v} view" for v in DIRECTION_ORDER]
    assert torch.allclose(out.text_embeddings_vd[1], encode(["a smiling bear, front view"])[0])
    assert torch.allclose(out.uncond_text_embeddings_vd, encode([""]).expand(4, -1, -1))
    assert torch.allclose(out.empty_text_embeddings, encode([""]))
    elevation = torch.tensor([10.0, 10.0, 10.0, 10.0, 70.0, 10.0])
    azimuth = torch.tensor([0.0, 44.0, 90.0, 180.0, 180.0, -136.0])
    index = direction_indices(out, elevation, azimuth, torch.ones(6))
    assert [DIRECTION_ORDER[i] for i in index] == ["front", "front", "side", "back", "overhead", "back"]
    assert out.use_perp_neg is False and out.perp_neg_f_fs == (4.0, 0.5, -2.426)


class TiedScorer:
    """A masked-LM stand-in: 'smiling' makes every view but the front unlikely."""

    def view_probabilities(self, prompts, view_words):
        rows = []
        for prompt in prompts:
            p = torch.tensor([0.25, 0.25, 0.25, 0.25])
            if "smiling" in prompt.split():
                p = torch.tensor([0.05, 0.85, 0.05, 0.05])
            rows.append(p)
        return torch.stack(rows)


def test_debiasing_processor_output(encode):
    out = build_prompt_output("bert-pmi-prompt-processor", {"protected_words": ["bear"]}, "a smiling bear",
                              encode, make_scorer=lambda model: TiedScorer())
    assert out.prompts_vd == ["a bear, side view", "a smiling bear, front view", "a bear, back view",
                              "a bear, top view"]  # D-SDS phrases, "smiling" kept only for the front
    assert out.directions[1].condition.ranges.front_half_width == 22.5
    assert out.record["debiasing"]["removed"]["back"] == ["smiling"]
    off = build_prompt_output("bert-pmi-prompt-processor", {"use_prompt_debiasing": False}, "a smiling bear", encode)
    assert off.prompts_vd[2] == "a smiling bear, back view"


def test_dnp_processor_uses_n_star_as_the_negative_prompt(encode):
    seen = {}

    def auto_negative(prompt, settings):
        seen.update(prompt=prompt, captioner=settings["captioner"], steps=settings["dns_steps"])
        return "a robot", {"negative_prompt": "a robot"}

    out = build_prompt_output("dnp-prompt-processor", {"captioner": "lab-judge"}, "a smiling bear", encode,
                              auto_negative=auto_negative)
    assert seen == {"prompt": "a smiling bear", "captioner": "lab-judge", "steps": 50}
    assert out.negative_prompt == "a robot"
    assert torch.allclose(out.uncond_text_embeddings_vd[2], encode(["a robot"])[0])
    assert torch.allclose(out.empty_text_embeddings, encode([""]))
    given = build_prompt_output("dnp-prompt-processor", {"negative_prompt": "a frog"}, "a bear", encode)
    assert given.negative_prompt == "a frog"


def test_processor_errors():
    from antijanus.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="prompt_processor_type"):
        processor_settings("deep-floyd-prompt-processor", {})
    assert processor_settings("bert-pmi-prompt-processor", {"view_phrases": {"overhead": "overhead view"}}
                              )["view_phrases"] == {"side": "side view", "front": "front view",
                                                    "back": "back view", "overhead": "overhead view"}


# ----------------------------------------------------------------------------- variants


def test_every_variant_runs_its_shipped_config_with_the_method_it_names(encode):
    """Each variant's guidance block and processor give the method named: Perp-Neg decided from
    the processor's output, D-SDS clipping over the run's own steps, SJC's score, n* for DNP."""
    from antijanus.core.guidance import decide_perp_neg, resolve_config

    steps = 37
    expected = {  # perp_neg, score clipping, SJC, processor
        "baseline": (False, False, False, "stable-diffusion-prompt-processor"),
        "perp-neg": (True, False, False, "stable-diffusion-prompt-processor"),
        "dsds-clip": (False, True, False, "stable-diffusion-prompt-processor"),
        "dsds-full": (False, True, False, "bert-pmi-prompt-processor"),
        "perp-neg-dsds": (True, True, False, "stable-diffusion-prompt-processor"),
        "sjc": (False, False, True, "bert-pmi-prompt-processor"),
        "sjc-dsds": (False, True, True, "bert-pmi-prompt-processor"),
        "dnp": (False, False, False, "dnp-prompt-processor"),
    }
    assert sorted(expected) == sorted(v.name for v in VARIANTS)
    for variant in VARIANTS:
        cfg = load_config(variant.config, variant.overrides, steps)
        config = guidance_config(cfg, PRIOR)
        resolved = resolve_config(config)
        perp_neg, clipping, sjc, processor = expected[variant.name]
        assert cfg.system.prompt_processor_type == processor, variant.name
        assert config.use_sjc == sjc and (resolved.clip is not None) == clipping, variant.name
        if clipping:
            assert config.clip_end_step == steps, variant.name  # ${trainer.max_steps}: the run's own steps
        assert config.guidance_scale == cfg.system.guidance.guidance_scale == 100.0
        blk = dict(block(cfg, "system.prompt_processor"), use_prompt_debiasing=False)
        kind = cfg.system.prompt_processor_type
        if kind == "dnp-prompt-processor":
            blk["negative_prompt"] = "a robot"
        out = build_prompt_output(kind, blk, "a bear", encode)
        assert decide_perp_neg(config, resolved, out).enabled == perp_neg, variant.name
    sjc = build_prompt_output("bert-pmi-prompt-processor",
                              block(load_config("dsds-sjc-sd.yaml", variant_by_name("sjc").overrides), "system.prompt_processor"),
                              "a smiling bear", encode)
    assert sjc.prompts_vd[3] == "a smiling bear, overhead view"  # threestudio's phrases for plain SJC
    assert sjc.directions[1].condition.ranges.front_half_width == 45.0


@pytest.mark.parametrize("representation", ["rgb", "latent", "grid"])
def test_the_sweep_file_has_the_fast_paths_variants(representation):
    """custom/janus_lab/configs/janus-3d-sweep.yaml (and -latent.yaml, -grid.yaml) = the same configs
    and method overrides; they add only the lab's models, resolution and test camera, and the latent
    one puts every NeRF variant on threestudio's Latent-NeRF system at the prior's latent size (the
    material block replaced whole), SJC's own latent volume unchanged; the grid one does the same on
    threestudio's volume-grid geometry, its block replaced whole by the fast path's latent volume
    (FastSettings' grid, channels, radius, the representation config's blob) at its voxel learning
    rate."""
    from antijanus.tools.sweep import Sweep

    os.environ.setdefault("JANUS_LAB_MODELS", os.path.dirname(PRIOR))
    sweep = Sweep.load(SWEEP if representation == "rgb" else SWEEP.replace(".yaml", f"-{representation}.yaml"))
    assert list(sweep.variants) == [v.name for v in VARIANTS]
    lab_keys = ("data.", "system.prompt_processor.debias_model=", "system.prompt_processor.captioner=")
    latent_keys = ["system_type=latentnerf-system", "system.geometry.n_feature_dims=4",
                   "system.material_type=no-material", "system.background.n_output_dims=4",
                   "system.background.color_activation=none"]
    settings = FastSettings()
    grid_keys = ["system.geometry_type=volume-grid", f"system.optimizer.params.geometry.lr={settings.lr:g}"]
    representation_keys = latent_keys + (grid_keys if representation == "grid" else [])
    material = {"n_output_dims": 4, "color_activation": "none", "requires_normal": True}
    volume = settings.volume
    geometry = block(load_config("perp-neg-nerf-sd.yaml"), "system.geometry")  # REPRESENTATION_CONFIG's blob
    grid = {"radius": volume.radius, "grid_size": [volume.resolution] * 3, "n_feature_dims": volume.latent_channels,
            "density_activation": geometry["density_activation"], "density_bias": "blob",  # = blob_magic3d's formula
            "density_blob_scale": geometry["density_blob_scale"], "density_blob_std": geometry["density_blob_std"],
            "normal_type": "finite_difference"}
    assert volume.features == "latent" and not volume.coarse_levels and geometry["density_bias"] == "blob_magic3d"
    for variant in VARIANTS:
        spec = sweep.variants[variant.name]
        assert os.path.basename(spec["config"]) == variant.config
        method = [o for o in spec["overrides"] if not o.startswith(lab_keys) and o not in representation_keys]
        assert method == list(variant.overrides), variant.name
        size = 16 if representation != "rgb" or variant.name.startswith("sjc") else 32
        assert f"data.width={size}" in spec["overrides"] and f"data.eval_height={size}" in spec["overrides"]
        nerf_latent = representation != "rgb" and not variant.name.startswith("sjc")
        assert all((key in spec["overrides"]) == nerf_latent for key in latent_keys), variant.name
        nerf_grid = nerf_latent and representation == "grid"
        assert all((key in spec["overrides"]) == nerf_grid for key in grid_keys), variant.name
        expected = {"system.material": material} if nerf_latent else {}
        if nerf_grid:
            expected["system.geometry"] = grid
        assert spec["replace"] == expected, variant.name
    assert fast3d.LAB_LATENT_RESOLUTION == 16
    assert sweep.prompts == lab_prompts() and sweep.seeds == [0]
    models = os.environ["JANUS_LAB_MODELS"]
    assert f"system.guidance.pretrained_model_name_or_path={models}/prior" in sweep.overrides
    assert f"system.prompt_processor.debias_model={models}/mlm" in sweep.variants["dsds-full"]["overrides"]
    assert f"system.prompt_processor.captioner={models}/captioner" in sweep.variants["dnp"]["overrides"]
    assert sweep.metrics.elevation_deg == settings.orbit_elevation
    assert sweep.metrics.n_views == settings.orbit_views + 1  # linspace(0, 360, 37): 10 degree steps
    steps = [o for o in sweep.overrides if o.startswith("trainer.max_steps=")]
    assert len(steps) == 1
    if representation == "grid":  # the fast path's run length and samples per ray
        assert steps == [f"trainer.max_steps={settings.steps}"]
        assert f"system.renderer.num_samples_per_ray={volume.samples}" in sweep.overrides


def test_prompts_and_kinds():
    assert lab_prompts() == ["a bear", "a smiling bear", "a robot", "a smiling robot", "a frog", "a smiling frog"]
    assert kind_of("a smiling frog") == "frog"


# ----------------------------------------------------------------------------- the extra-metrics hook


def test_extra_metrics_of_an_orbit_go_into_the_runs_metrics(tmp_path):
    """tools.evaluate's hook: MetricModels(extra_metrics=...) adds per-run metrics of the orbit
    (the launcher path's Janus metric) without the tools importing the lab."""
    from PIL import Image

    from antijanus.tools.evaluate import MetricModels, MetricSettings, evaluate_folder

    for i in range(5):
        Image.new("RGB", (16, 16), (40 * i,) * 3).save(tmp_path / f"{i}.png")
    seen = []

    def extra(frames, azimuths, prompt):
        seen.append((tuple(frames.shape), azimuths.tolist(), prompt))
        return {"janus": 1.0, "view_accuracy": 0.5}

    settings = MetricSettings(random_lpips=True, preprocess="none", clip_model="/no/such/clip", device="cpu")

    class Flat:
        name = "flat"

        def view_scores(self, images, prompt, views):
            return torch.zeros(len(images), len(views))

    metrics, _ = evaluate_folder(str(tmp_path), "a bear", settings, MetricModels(settings, Flat(), extra))
    assert seen == [((5, 3, 16, 16), [0.0, 90.0, 180.0, 270.0, 360.0], "a bear")]
    assert metrics["janus"] == 1.0 and metrics["view_accuracy"] == 0.5 and "a_lpips" in metrics


# ----------------------------------------------------------------------------- the command


def test_fast_path_command_smoke(tmp_path):
    """custom/janus_lab/scripts/lab_experiment_3d.py on the committed lab models: every variant, one prompt, one
    seed, 3 steps, a 6-view orbit; the table, the grids and each run's record."""
    sys.path.insert(0, LAB_SCRIPTS)
    try:
        import lab_experiment_3d
    finally:
        sys.path.pop(0)
    out = tmp_path / "lab-3d"
    code = lab_experiment_3d.main(["--out", str(out), "--prompts", "a smiling bear", "--seeds", "0", "--steps", "3",
                                   "--orbit-views", "6", "--jobs", "1"])
    assert code == 0
    table = (out / "table.md").read_text()
    for variant in VARIANTS:
        assert f"| {variant.name} | all prompts | 1 |" in table
        assert (out / "grids" / f"{variant.name}.png").exists()
        result = json.loads((out / "runs" / variant.name / "a_smiling_bear" / "s0" / "result.json").read_text())
        metrics = result["metrics"]
        assert {"janus", "face_in_back", "front_segments", "view_accuracy", "a_jfd"} <= set(metrics)
        assert metrics["n_frames"] == 6 and 0.0 <= metrics["view_accuracy"] <= 1.0 and math.isfinite(metrics["a_jfd"])
        assert torch.load(out / "runs" / variant.name / "a_smiling_bear" / "s0" / "orbit.pt").shape == (6, 3, 32, 32)
        assert len(result["history"]["loss_sds"]) == 3
    records = {v.name: json.loads((out / "prompts" / f"{v.name}--a_smiling_bear.json").read_text()) for v in VARIANTS}
    assert records["dsds-full"]["debiasing"]["debias_model"] == model_path("mlm")
    assert records["dnp"]["negative_prompt"] and records["dnp"]["dnp"]["captioner"] == LabModels.default().captioner
    assert records["sjc-dsds"]["prompts_vd"]["overhead"].endswith("top view")
    # the word-level lab LM (seventh entry, item 6) takes "smiling" out of the back view only
    assert records["dsds-full"]["prompts_vd"]["back"].startswith("a bear")
    assert records["dsds-full"]["prompts_vd"]["front"].startswith("a smiling bear")
    assert "## Per-view prompts" in table and "| dsds-full | a smiling bear |" in table
    logs = {v.name: json.loads((out / "runs" / v.name / "a_smiling_bear" / "s0" / "result.json").read_text())
            ["guidance_log"] for v in VARIANTS}
    assert any("Perp-Neg on" in line for line in logs["perp-neg"])
    assert any("Perp-Neg off" in line for line in logs["baseline"])
    # a second run finds every run done and only rewrites the table
    assert lab_experiment_3d.main(["--out", str(out), "--prompts", "a smiling bear", "--seeds", "0", "--steps", "3",
                                   "--orbit-views", "6", "--report-only"]) == 0


def test_nothing_left_to_run_is_no_error_with_parallel_jobs():
    """A resumed experiment whose runs all finished before has no tasks: with --jobs 2 that is
    an empty result, not a crash while starting the worker pool."""
    from janus_lab.experiment3d.runs import run_tasks

    assert run_tasks([], jobs=2, log=lambda m: None) == []
    assert run_tasks([], jobs=1, log=lambda m: None) == []


def test_finished_runs_are_tied_to_the_models_weights_not_their_paths(tmp_path):
    """A model that takes part in training, retrained in place (same folder), must not let old
    results count as done; the judge only judges, so a retrained judge trains nothing again."""
    folders = {}
    for name in ("prior", "mlm", "judge", "captioner"):
        folders[name] = tmp_path / name
        (folders[name] / "sub").mkdir(parents=True)
        (folders[name] / "sub" / "weights.bin").write_bytes(name.encode())
    models = LabModels(**{name: str(folder) for name, folder in folders.items()})
    before = Experiment(str(tmp_path / "out"), models=models).key()
    assert Experiment(str(tmp_path / "out"), models=models).key() == before
    (folders["judge"] / "sub" / "weights.bin").write_bytes(b"retrained")
    assert Experiment(str(tmp_path / "out"), models=models).key() == before
    for name in ("prior", "mlm", "captioner"):
        (folders[name] / "sub" / "weights.bin").write_bytes(b"retrained")
        assert Experiment(str(tmp_path / "out"), models=models).key() != before, name
        before = Experiment(str(tmp_path / "out"), models=models).key()


def test_a_run_judged_by_other_weights_is_judged_again_from_its_orbit(tmp_path):
    """results(): a finished run whose metrics came from another judge gets the current judge's
    metrics, computed from its saved orbit (coverage, a property of the volume, kept) and cached
    beside it; it is not trained again. A run recorded under another key is not finished: it is
    left out of the results and runs again."""
    import glob

    from janus_lab.experiment3d.runs import RESULT, RunSpec
    from janus_lab.janus import orbit_metrics
    from janus_lab.judge import Judge
    from janus_lab.orbits import orbit_azimuths
    from janus_lab.volume_orbits import load_orbit_frames, save_orbit
    from janus_lab.world import Creature, render

    experiment = Experiment(str(tmp_path / "out"), variants=("baseline", "sjc"), prompts=("a bear",), seeds=(0,))
    azimuths = orbit_azimuths(36)
    frames = render([Creature("bear")] * 36, torch.full((36,), 15.0), azimuths, 2.0, 70.0)["image"]
    stale = {"janus": 1.0, "view_accuracy": 0.0, "face_scrambled": 1.0, "coverage": 0.25}
    for variant, key in (("baseline", experiment.run_key("baseline")), ("sjc", "a key of an older version")):
        spec = RunSpec(variant, "a bear", 0)
        os.makedirs(experiment.run_dir(spec))
        save_orbit(experiment.run_dir(spec), frames)
        record = {"variant": variant, "prompt": "a bear", "seed": 0, "key": key, "metrics": dict(stale),
                  "train_s": 1.0, "judge": "another judge"}
        with open(os.path.join(experiment.run_dir(spec), RESULT), "w") as f:
            json.dump(record, f)
    assert [t.spec.variant for t in experiment.tasks(log=lambda m: None)] == ["sjc"]  # the baseline is finished
    results = {r["variant"]: r for r in experiment.results()}
    assert list(results) == ["baseline"]
    judge = Judge.load(LabModels.default().judge)
    expected = orbit_metrics(load_orbit_frames(experiment.run_dir(RunSpec("baseline", "a bear", 0))), azimuths, 15.0,
                             judge, kind="bear")
    rejudged = results["baseline"]["metrics"]
    assert rejudged["view_accuracy"] == pytest.approx(expected["view_accuracy"]) and rejudged["view_accuracy"] > 0.8
    assert rejudged["janus"] == 0.0 and rejudged["face_scrambled"] < 0.5 and rejudged["coverage"] == 0.25
    assert glob.glob(os.path.join(experiment.run_dir(RunSpec("baseline", "a bear", 0)), "metrics-judge-*.json"))


def test_a_run_finished_before_the_outcomes_gets_them_from_its_orbit(tmp_path):
    """results(): a run judged by the current judge before the outcome existed (seventh entry)
    gets the outcome columns from its saved orbit; the metrics it has are kept as recorded."""
    from janus_lab.experiment3d.runs import RESULT, RunSpec
    from janus_lab.janus import outcome_name
    from janus_lab.orbits import orbit_azimuths
    from janus_lab.volume_orbits import save_orbit
    from janus_lab.world import Creature, render

    experiment = Experiment(str(tmp_path / "out"), variants=("baseline",), prompts=("a bear",), seeds=(0,))
    frames = render([Creature("bear")] * 36, torch.full((36,), 15.0), orbit_azimuths(36), 2.0, 70.0)["image"]
    spec = RunSpec("baseline", "a bear", 0)
    os.makedirs(experiment.run_dir(spec))
    save_orbit(experiment.run_dir(spec), frames)
    old = {"janus": 1.0, "view_accuracy": 0.0, "face_scrambled": 0.5, "coverage": 0.25}
    record = {"variant": "baseline", "prompt": "a bear", "seed": 0, "key": experiment.run_key("baseline"),
              "metrics": dict(old), "train_s": 1.0, "judge": experiment.judge_identity()}
    with open(os.path.join(experiment.run_dir(spec), RESULT), "w") as f:
        json.dump(record, f)
    metrics = experiment.results()[0]["metrics"]
    assert {k: metrics[k] for k in old} == old
    assert outcome_name(metrics) == "one_face_front" and metrics["outcome_one_face_front"] == 1.0


def test_an_edited_variant_config_runs_again(tmp_path, monkeypatch):
    """The configs are found when loaded (ANTIJANUS_CONFIGS read then, not at import); an edit to
    a variant's config changes that variant's run key only."""
    import shutil

    from janus_lab.locations import CONFIGS_ENV, plugin_config_dir

    configs = tmp_path / "configs"
    shutil.copytree(plugin_config_dir(), configs)
    monkeypatch.setenv(CONFIGS_ENV, str(configs))
    experiment = Experiment(str(tmp_path / "out"))
    before = {name: experiment.run_key(name) for name in ("baseline", "dsds-clip")}
    with open(configs / "dsds-nerf-sd.yaml", "a") as f:
        f.write("\n# edited\n")
    assert experiment.run_key("dsds-clip") != before["dsds-clip"]
    assert experiment.run_key("baseline") == before["baseline"]


def _fake_models(root):
    """Model folders with one small file each (their contents: the folder's name)."""
    folders = {}
    for name in ("prior", "mlm", "judge", "captioner"):
        folders[name] = root / name
        (folders[name] / "sub").mkdir(parents=True)
        (folders[name] / "sub" / "weights.bin").write_bytes(name.encode())
    return LabModels(**{name: str(folder) for name, folder in folders.items()})


def test_a_retrained_captioner_judge_gives_other_keys(tmp_path):
    """The lab captioner folder holds only its json; DNP's captions come from the judge it names.
    Other weights there (or another judge named) give another experiment key; the lab judge (it
    only judges) does not."""
    import shutil

    from janus_lab.locations import lab_root
    from janus_lab.model_files import model_path

    for name in ("captioner", "judge-v8", "judge"):
        shutil.copytree(os.path.join(lab_root(), name), tmp_path / name)
    models = LabModels(model_path("prior"), model_path("mlm"), str(tmp_path / "judge"), str(tmp_path / "captioner"))
    key = Experiment(str(tmp_path / "out"), models=models).key()
    (tmp_path / "judge" / "judge.safetensors").write_bytes(b"another lab judge")
    assert Experiment(str(tmp_path / "out"), models=models).key() == key
    (tmp_path / "judge-v8" / "judge.safetensors").write_bytes(b"retrained")
    assert Experiment(str(tmp_path / "out"), models=models).key() != key


def test_keys_depend_on_contents_not_on_paths(tmp_path, monkeypatch):
    """The same experiment with its models copied to another folder, and its configs too, has the
    same experiment and run keys; other weights, an edited config, another variant override or
    setting give another key; a seed listed twice is an error, not a run counted twice."""
    import shutil

    from janus_lab.experiment3d import variants
    from janus_lab.locations import CONFIGS_ENV, plugin_config_dir

    models = _fake_models(tmp_path / "here")
    shutil.copytree(tmp_path / "here", tmp_path / "moved")
    moved = LabModels(**{k: v.replace(str(tmp_path / "here"), str(tmp_path / "moved"))
                         for k, v in dataclasses.asdict(models).items()})
    assert moved != models
    here = Experiment(str(tmp_path / "out"), models=models)
    key, run_keys = here.key(), {v: here.run_key(v) for v in ("baseline", "dnp")}
    shutil.copytree(plugin_config_dir(), tmp_path / "configs")
    monkeypatch.setenv(CONFIGS_ENV, str(tmp_path / "configs"))
    there = Experiment(str(tmp_path / "other-out"), models=moved)
    assert there.key() == key and {v: there.run_key(v) for v in run_keys} == run_keys
    # other contents: other keys
    (tmp_path / "moved" / "mlm" / "sub" / "weights.bin").write_bytes(b"retrained")
    assert Experiment(str(tmp_path / "out"), models=moved).key() != key
    assert Experiment(str(tmp_path / "out"), models=models, settings=FastSettings(steps=601)).key() != key
    with open(tmp_path / "configs" / "dnp-nerf-sd.yaml", "a") as f:
        f.write("\n# edited\n")
    assert here.run_key("dnp") != run_keys["dnp"] and here.run_key("baseline") == run_keys["baseline"]
    edited = tuple(dataclasses.replace(v, overrides=v.overrides + ("system.guidance.guidance_scale=50",))
                   if v.name == "baseline" else v for v in variants.VARIANTS)
    monkeypatch.setattr(variants, "VARIANTS", edited)
    assert here.run_key("baseline") != run_keys["baseline"]
    with pytest.raises(ConfigError, match="seeds"):
        Experiment(str(tmp_path / "out"), seeds=(0, 1, 0))
    with pytest.raises(ConfigError, match="prompts"):
        Experiment(str(tmp_path / "out"), prompts=("a bear", "a bear"))


def test_calibration_shows_no_janus_verdicts(tmp_path, capsys):
    """--calibrate runs the baseline alone and reports only what the methods do not target: its
    progress lines and calibration.md name neither the Janus verdict nor the view accuracy."""
    sys.path.insert(0, LAB_SCRIPTS)
    try:
        import lab_experiment_3d
    finally:
        sys.path.pop(0)
    out = tmp_path / "calibration"
    code = lab_experiment_3d.main(["--out", str(out), "--calibrate", "--steps-options", "2", "--lr-options", "0.1",
                                   "--prompts", "a frog", "--seeds", "0", "--orbit-views", "4", "--jobs", "1"])
    assert code == 0
    printed = capsys.readouterr().out.lower()
    table = (out / "calibration.md").read_text().lower()
    assert "kind accuracy" in printed and "face in front" in printed and "| configs | latent24 | configs' | 2 | 0.1 | 1 |" in table
    assert "face scrambled (control)" in table
    assert "rule (face in front >= 0.5 and face scrambled <= 0.2" in table and "**configs cameras, latent24, 2 steps, lr 0.1**" in table
    # whether a 2-step blob passes the face gate depends on the committed prior (prior v6's decoded
    # blob is judged with a face on its one front frame): the message follows the row's face in front
    row = next(line for line in table.splitlines() if line.startswith("| configs | latent24 |"))
    face_in_front = float(row.split("|")[8].split("±")[0])
    no_face = "no setting passes: in none does the baseline draw a face where it belongs" in table
    assert no_face == (face_in_front < 0.5)
    for text in (printed, table):
        assert "janus" not in text and "view accuracy" not in text
    assert os.listdir(out / "latent24-steps2-lr0.1" / "runs") == ["baseline"]
    # the shared guidance scale and the volume as calibration options
    code = lab_experiment_3d.main(["--out", str(out), "--calibrate", "--steps-options", "2", "--lr-options", "0.1",
                                   "--guidance-scale-options", "20", "--volume-options", "grid24", "--prompts", "a frog",
                                   "--seeds", "0", "--orbit-views", "4", "--jobs", "1"])
    table = (out / "calibration.md").read_text()
    assert code == 0 and "| configs | grid24 | 20 | 2 | 0.1 | 1 |" in table and "**configs cameras, grid24, guidance scale 20, 2 steps" in table
    experiment = json.loads((out / "grid24-steps2-lr0.1-cfg20" / "experiment.json").read_text())
    assert experiment["settings"]["guidance_scale"] == 20.0 and experiment["settings"]["volume"]["resolution"] == 24


def test_calibration_rule_needs_a_face_then_prefers_kind_accuracy_and_fewer_steps():
    """The pre-written rule: settings whose baseline shows no face in front are not eligible even
    with the best kind accuracy; among eligible ones kind accuracy within 0.05 ties, fewer steps
    win; when none is eligible the most face wins and the rule says so."""
    from janus_lab.experiment3d.calibration import choose_calibration

    rows = [{"steps": 300, "lr": 0.1, "kind_accuracy": 1.00, "face_in_front": 0.2},
            {"steps": 600, "lr": 0.1, "kind_accuracy": 0.90, "face_in_front": 0.6},
            {"steps": 300, "lr": 0.03, "kind_accuracy": 0.86, "face_in_front": 0.9},
            {"steps": 600, "lr": 0.03, "kind_accuracy": 0.70, "face_in_front": 1.0}]
    chosen, measures = choose_calibration(rows)
    assert measures and (chosen["steps"], chosen["lr"]) == (300, 0.03)
    rows[2]["kind_accuracy"] = 0.80  # out of the tie: the better kind accuracy wins despite more steps
    chosen, measures = choose_calibration(rows)
    assert measures and (chosen["steps"], chosen["lr"]) == (600, 0.1)
    faceless = [{**r, "face_in_front": f} for r, f in zip(rows, (0.1, float("nan"), 0.3, 0.2))]
    chosen, measures = choose_calibration(faceless)
    assert not measures and (chosen["steps"], chosen["lr"]) == (300, 0.03)
    with pytest.raises(ValueError):
        choose_calibration([])


def test_calibration_rule_needs_faces_that_scrambling_removes_and_breaks_ties_by_listed_volume():
    """The v4 gate: a setting whose baseline's faces survive scrambling its pixels (the judge
    reads colours, not a face) is not eligible, however good; full ties go to the volume listed first."""
    from janus_lab.experiment3d.calibration import choose_calibration

    rows = [{"volume": "grid48", "steps": 300, "lr": 0.1, "kind_accuracy": 1.0, "face_in_front": 1.0, "face_scrambled": 0.9},
            {"volume": "grid24", "steps": 300, "lr": 0.1, "kind_accuracy": 0.7, "face_in_front": 0.8, "face_scrambled": 0.1},
            {"volume": "pyramid", "steps": 300, "lr": 0.1, "kind_accuracy": 0.7, "face_in_front": 0.8, "face_scrambled": 0.0}]
    chosen, measures = choose_calibration(rows)
    assert measures and chosen["volume"] == "grid24"
    rows[1]["face_scrambled"] = float("nan")  # an unmeasured control does not pass
    chosen, measures = choose_calibration(rows)
    assert measures and chosen["volume"] == "pyramid"
    for row in rows:
        row["face_scrambled"] = 0.5
    chosen, measures = choose_calibration(rows)
    assert not measures and chosen["volume"] == "grid48"  # none eligible: most face in front, then listed order


def test_calibration_rejects_an_unknown_volume(tmp_path):
    from janus_lab.experiment3d.calibration import CalibrationGrid, calibrate
    from antijanus.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="volumes"):
        calibrate(str(tmp_path), CalibrationGrid([2], [0.1], volumes=["grid12"]))


def test_a_shared_guidance_scale_reaches_every_variant_and_is_validated(tmp_path):
    """FastSettings.guidance_scale replaces each config's scale for every variant alike (None keeps
    the configs' own, SD's 100); a bad scale is a ConfigError naming the key."""
    variants = ("baseline", "perp-neg", "sjc")
    own = Experiment(str(tmp_path / "own"), variants=variants, prompts=("a bear",), seeds=(0,)).tasks(log=lambda m: None)
    assert {t.spec.variant: t.guidance.guidance_scale for t in own} == {v: 100.0 for v in variants}
    shared = Experiment(str(tmp_path / "shared"), variants=variants, prompts=("a bear",), seeds=(0,),
                        settings=FastSettings(guidance_scale=20.0)).tasks(log=lambda m: None)
    assert {t.spec.variant: t.guidance.guidance_scale for t in shared} == {v: 20.0 for v in variants}
    assert all(a.key != b.key for a, b in zip(own, shared))  # a finished run at another scale runs again
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="guidance_scale"):
            FastSettings(guidance_scale=bad)


def test_calibration_tie_goes_to_the_larger_guidance_scale():
    from janus_lab.experiment3d.calibration import choose_calibration

    rows = [{"volume": "grid48", "guidance_scale": scale, "steps": 300, "lr": 0.1, "kind_accuracy": 0.9,
             "face_in_front": face, "face_scrambled": 0.0} for scale, face in ((7.5, 1.0), (20.0, 0.6), (None, 0.4))]
    chosen, measures = choose_calibration(rows)
    assert measures and chosen["guidance_scale"] == 20.0  # the configs' own is not eligible (no face)
    rows[2]["face_in_front"] = 0.5
    assert choose_calibration(rows)[0]["guidance_scale"] is None


def test_sds_2d_optimises_one_image_in_pixels_or_latents_and_validates_its_settings(tmp_path):
    """The 2D diagnostic: the baseline's guidance moves the image away from its grey start, in
    pixels (any resolution, judged at 32x32) and in latents (decoded); bad settings name their key."""
    from antijanus.core.guidance import ScoreDistillationGuidance
    from janus_lab.experiment3d.runs import worker_models
    from janus_lab.sds2d import SDS2DSettings, optimise_image

    experiment = Experiment(str(tmp_path), variants=("baseline",), prompts=("a bear",), seeds=(0,),
                            settings=FastSettings(steps=3))
    task = experiment.tasks(log=lambda m: None)[0]
    backbone, _ = worker_models(experiment.models, 1)
    for settings in (SDS2DSettings("pixels", 16, steps=3), SDS2DSettings("latents", steps=3)):
        images = []
        for lr in (settings.lr, 1e-9):  # the guidance's steps move the image; a vanishing lr does not
            guidance = ScoreDistillationGuidance(task.guidance, "cpu", backbone=backbone)
            out = optimise_image(guidance, task.prompt_output, dataclasses.replace(settings, lr=lr))
            assert out["image"].shape == (3, 32, 32) and out["loss_sds"].shape == (3,)
            assert torch.isfinite(out["loss_sds"]).all()
            images.append(out["image"])
        assert (images[0] - images[1]).abs().mean() > 1e-3
    for bad, key in ((dict(parameterisation="voxels"), "parameterisation"), (dict(resolution=1), "resolution"),
                     (dict(steps=0), "steps"), (dict(lr=0.0), "lr")):
        with pytest.raises(ConfigError, match=key):
            SDS2DSettings(**bad)


def test_a_latent_volume_is_threestudios_latent_nerf_at_the_priors_latent_size():
    """features="latent": the prior's 4 latent channels, unbounded (no sigmoid, no material), a
    4-output background without activation, rendered at 16x16; training hands the renders to the
    guidance as latents; the orbit is decoded into images; a bad value names its key."""
    settings = fast3d.VolumeSettings(resolution=8, samples=8, features="latent")
    scene = fast3d.make_scene(settings, seed=0)
    assert scene.volume.grid.shape == (1, 5, 8, 8, 8)
    with torch.no_grad():
        scene.volume.grid[:, 1:] = 3.0  # beyond a sigmoid's range: kept as it is
    assert torch.allclose(scene.volume(torch.zeros(4, 3), with_normal=False)["albedo"], torch.full((4, 4), 3.0))
    with torch.no_grad():
        scene.background.mlp[-1].weight.fill_(5.0)
    assert scene.background(torch.tensor([[0.0, 0.0, 1.0]])).max() > 1.0  # no activation
    rep = Representation.from_config(settings, max_steps=10)
    assert (rep.cameras.height, rep.cameras.width) == (16, 16)
    assert Representation.from_config(fast3d.VolumeSettings(resolution=8), max_steps=10).cameras.height == 32

    calls = []

    class RecordingGuidance:
        def set_run_max_steps(self, steps):
            pass

        def update_step(self, epoch, step):
            pass

        def __call__(self, rgb, prompt_utils, elevation, azimuth, distances, **kwargs):
            calls.append((tuple(rgb.shape), kwargs))
            return {"loss_sds": rgb.square().mean()}

    fast3d.train(RecordingGuidance(), None, scene, rep.cameras, rep.system, rep.material, steps=2, seed=0)
    assert calls == [((1, 16, 16, 4), {"rgb_as_latents": True})] * 2
    azimuths = torch.tensor([0.0, 90.0])
    with pytest.raises(ValueError, match="decode"):
        fast3d.render_orbit(scene, azimuths, 15.0, 2.0, 70.0, rep.material, 2, resolution=16)
    decoded = []

    def decode(latents):
        decoded.append(tuple(latents.shape))
        return torch.sigmoid(latents[:, :3]).repeat_interleave(2, -1).repeat_interleave(2, -2)

    frames, opacity = fast3d.render_orbit(scene, azimuths, 15.0, 2.0, 70.0, rep.material, 2, resolution=16,
                                          decode=decode)
    assert decoded == [(2, 4, 16, 16)] and frames.shape == (2, 3, 32, 32) and opacity.shape == (2, 1, 16, 16)
    with pytest.raises(ConfigError, match="volume.features"):
        fast3d.VolumeSettings(features="rgba")


def test_paired_comparison_against_the_baseline_counts_discordant_runs_and_its_exact_p():
    """McNemar on the shared (prompt, seed) runs: only the discordant pairs count; 6 against 0 is
    p = 2 / 2^6; balanced counts give 1; a variant without shared runs is left out."""
    from janus_lab.experiment3d.tables import paired_against_baseline
    from janus_lab.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(6, 0) == mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(8, 1) == pytest.approx(2 * (1 + 9) / 512)
    assert mcnemar_exact(600, 500) == pytest.approx(0.00282, abs=5e-5)  # n > 1023: no float overflow
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)

    def run(variant, seed, janus, face=0.0, prompt="a bear"):
        return {"variant": variant, "prompt": prompt, "seed": seed, "metrics": {"janus": janus, "face_in_back": face}}

    results = [run("baseline", s, 1.0, 1.0) for s in range(6)] + [run("perp-neg", s, 0.0, 1.0) for s in range(6)]
    results += [run("perp-neg", 9, 1.0), run("dnp", 0, 1.0, prompt="a frog")]  # no baseline run to pair with
    rows = paired_against_baseline(results, ["baseline", "perp-neg", "dnp"])
    assert [r["variant"] for r in rows] == ["perp-neg"] and rows[0]["pairs"] == 6
    assert rows[0]["janus"] == {"b": 6, "c": 0, "p": pytest.approx(2 / 64)}
    assert rows[0]["face_in_back"] == {"b": 0, "c": 0, "p": 1.0}
    assert paired_against_baseline(results, ["perp-neg"]) == []


def test_registered_reading_needs_the_corrected_p_and_the_face_kept_in_front(tmp_path):
    """The first entry's rule: significant only below 0.05 / comparisons; fewer Janus runs with the
    face in front below 0.8 x the baseline's is "fewer faces, not a cure"; more Janus says so."""
    from janus_lab.experiment3d.tables import registered_reading, write_tables

    assert registered_reading(12, 1, 0.003, 0.5, 0.5, 7) == "fewer Janus"
    assert registered_reading(12, 1, 0.008, 0.5, 0.5, 7) == "not established"  # 0.008 > 0.05 / 7
    assert registered_reading(12, 1, 0.008, 0.5, 0.5, 1) == "fewer Janus"
    assert registered_reading(12, 1, 0.003, 0.39, 0.5, 7) == "fewer faces, not a cure"
    assert registered_reading(12, 1, 0.003, 0.40, 0.5, 7) == "fewer Janus"
    assert registered_reading(1, 12, 0.003, 0.5, 0.5, 7) == "more Janus"
    assert registered_reading(12, 1, 0.003, float("nan"), 0.5, 7).startswith("fewer Janus (face in front not")
    with pytest.raises(ValueError):
        registered_reading(1, 1, 1.0, 0.5, 0.5, 0)

    def run(variant, seed, janus, face_in_front):
        metrics = {"janus": janus, "face_in_back": janus, "janus_two_fronts": 0.0, "face_in_front": face_in_front,
                   "face_scrambled": 0.0, "view_accuracy": 0.5, "a_jfd": 0.1, "kind_accuracy": 1.0, "coverage": 0.1}
        return {"variant": variant, "prompt": "a bear", "seed": seed, "metrics": metrics, "train_s": 1.0}

    results = [run("baseline", s, 1.0, 0.6) for s in range(8)]
    results += [run("dnp", s, 0.0, 0.1) for s in range(8)] + [run("perp-neg", s, 0.0, 0.6) for s in range(8)]
    paths = write_tables(results, str(tmp_path), ["baseline", "perp-neg", "dnp"], ["a bear"])
    with open(paths["markdown"]) as f:
        table = f.read()
    # 8 / 0: p = 2 / 256 < 0.05 / 2
    assert "| perp-neg | 8 | 8 / 0 | 0.008 | 8 / 0 | 0.008 | fewer Janus |" in table
    assert "| dnp | 8 | 8 / 0 | 0.008 | 8 / 0 | 0.008 | fewer faces, not a cure |" in table
    assert "p < 0.05 / 2 (Bonferroni)" in table


def test_calibration_says_which_gate_no_setting_passed():
    """The message names the failed condition: no face in front, faces also on scrambled pixels,
    or a control that was never measured (NaN), never a '> 0.2' it did not see."""
    from janus_lab.experiment3d.calibration import _no_setting_passes, choose_calibration

    row = lambda face, scrambled: {"steps": 300, "lr": 0.1, "kind_accuracy": 0.9, "face_in_front": face,
                                   "face_scrambled": scrambled}
    for rows, words in (([row(0.1, 0.0)], "none does the baseline draw a face"),
                        ([row(0.8, 0.5)], "also sees one on scrambled pixels"),
                        ([row(0.8, math.nan)], "was not measured"),
                        ([{**row(0.8, 0.0), "reconstruction_passed": False}], "fails the reconstruction control")):
        best, eligible = choose_calibration(rows)
        assert not eligible and words in _no_setting_passes(rows, best)
    mixed = [{**row(0.8, 0.0), "reconstruction_passed": False}, {**row(0.9, 0.5), "reconstruction_passed": True}]
    best, eligible = choose_calibration(mixed)
    message = _no_setting_passes(mixed, best)
    assert not eligible and "reconstruction control" in message and "scrambled pixels" in message


def test_lab_sweep_with_the_priors_cameras_is_its_own_sweep(tmp_path, capsys):
    """--cameras prior: the fast path's prior framing as data overrides, in a sweep of its own name
    (its runs are never taken for runs with the configs' cameras)."""
    sys.path.insert(0, LAB_SCRIPTS)
    try:
        import lab_sweep
    finally:
        sys.path.pop(0)
    from janus_lab.experiment3d.settings import prior_camera_overrides

    args = ["--dry-run", "--variants", "baseline", "--prompts", "a bear", "--seeds", "0", "--out", str(tmp_path)]
    assert lab_sweep.main(args) == 0
    default = capsys.readouterr().out
    assert lab_sweep.main(args + ["--cameras", "prior"]) == 0
    prior = capsys.readouterr().out
    assert "-cam-prior" in prior and "-cam-prior" not in default
    assert all(o.split("=")[0] in prior for o in prior_camera_overrides()) and "center_perturb=0.0" not in default


def test_lab_sweep_guidance_scale_is_every_runs_override_in_a_sweep_of_its_own(tmp_path, capsys):
    """--guidance-scale 7.5 (the fast path's calibrated scale): every variant's launch command
    carries system.guidance.guidance_scale=7.5, after the configs' own, in a sweep named for it;
    a non-positive or non-finite scale is refused by the parser, naming the option."""
    sys.path.insert(0, LAB_SCRIPTS)
    try:
        import lab_sweep
    finally:
        sys.path.pop(0)
    args = ["--dry-run", "--prompts", "a bear", "--seeds", "0", "--out", str(tmp_path)]
    assert lab_sweep.main(args) == 0
    default = capsys.readouterr().out
    assert lab_sweep.main(args + ["--guidance-scale", "7.5", "--cameras", "prior"]) == 0
    scaled = capsys.readouterr().out.strip().splitlines()
    assert "guidance_scale=7.5" not in default and "-gs7.5" not in default
    assert len(scaled) == len(VARIANTS)
    for command in scaled:
        assert "-cam-prior-gs7.5" in command and command.count("system.guidance.guidance_scale=7.5") == 1
        assert command.rindex("system.guidance.guidance_scale=7.5") > command.rfind("data.eval_fovy_deg")
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(SystemExit):
            lab_sweep.main(args + ["--guidance-scale", bad])
        assert "--guidance-scale" in capsys.readouterr().err


def test_the_reconstruction_control_makes_a_setting_ineligible_only_when_it_failed():
    """A setting whose judge failed the reconstruction control is not eligible however good its
    baseline looks; an unmeasured control (None, e.g. an RGB volume) does not exclude it."""
    from janus_lab.experiment3d.calibration import choose_calibration

    rows = [{"cameras": c, "volume": "latent24", "steps": 600, "lr": 0.1, "kind_accuracy": k, "face_in_front": 0.9,
             "face_scrambled": 0.0, "reconstruction_passed": p}
            for c, k, p in (("configs", 1.0, False), ("prior", 0.8, True))]
    chosen, measures = choose_calibration(rows)
    assert measures and chosen["cameras"] == "prior"
    rows[0]["reconstruction_passed"] = None
    assert choose_calibration(rows)[0]["cameras"] == "configs"
    rows[0]["reconstruction_passed"] = rows[1]["reconstruction_passed"] = False
    assert not choose_calibration(rows)[1]


def test_camera_presets_frame_the_runs_as_the_priors_world(tmp_path):
    """``cameras="prior"``: the world's distance and fovy ranges, centred cameras, the test orbit at
    the ranges' middle, the rest from the config; the preset is part of the experiment key (every
    setting is); an unknown preset is a ConfigError naming the key."""
    from janus_lab.data import WorldBias
    from janus_lab.experiment3d.calibration import CalibrationGrid, calibrate
    from janus_lab.experiment3d.settings import CAMERA_PRESETS, prior_framed

    volume = fast3d.VolumeSettings(resolution=24, features="latent")
    configs = Representation.from_config(volume, max_steps=100)
    prior = Representation.from_config(volume, max_steps=100, preset="prior")
    bias = WorldBias()
    assert prior.cameras.camera_distance_range == tuple(bias.distance_range)
    assert prior.cameras.fovy_range == tuple(bias.fovy_range)
    assert prior.cameras.camera_perturb == prior.cameras.center_perturb == prior.cameras.up_perturb == 0.0
    assert (prior.orbit_distance, prior.orbit_fovy) == pytest.approx((sum(bias.distance_range) / 2, sum(bias.fovy_range) / 2))
    assert configs.cameras.center_perturb > 0 and (configs.orbit_distance, configs.orbit_fovy) == (2.0, 70.0)
    for name in ("elevation_range", "azimuth_range", "light_distance_range", "height"):
        assert getattr(prior.cameras, name) == getattr(configs.cameras, name)
    assert prior_framed(configs.cameras) == prior.cameras
    # sampled training cameras: inside the world's ranges, looking at the origin
    sampler = fast3d.CameraSampler(prior.cameras, torch.Generator().manual_seed(0))
    for step in range(20):
        cams = sampler.sample(step)
        assert bias.distance_range[0] <= float(cams.positions.norm(dim=-1)) <= bias.distance_range[1]
        centre_ray = cams.rays_d[0, 7:9, 7:9].mean((0, 1))
        assert torch.allclose(torch.nn.functional.normalize(centre_ray, dim=0),
                              -torch.nn.functional.normalize(cams.positions[0], dim=0), atol=0.05)
    assert FastSettings().to_dict()["cameras"] == "configs" and FastSettings(cameras="prior").to_dict()["cameras"] == "prior"
    assert set(FastSettings().to_dict()) == {f.name for f in dataclasses.fields(FastSettings)}
    a = Experiment(str(tmp_path / "a"), variants=("baseline",), prompts=("a bear",), seeds=(0,))
    b = Experiment(str(tmp_path / "b"), variants=("baseline",), prompts=("a bear",), seeds=(0,),
                   settings=FastSettings(cameras="prior"))
    assert a.key() != b.key()
    assert b.tasks(log=lambda m: None)[0].representation.cameras == prior.cameras
    assert CAMERA_PRESETS == ("configs", "prior")
    # the same cameras as threestudio overrides (the launcher path's --cameras prior)
    from omegaconf import OmegaConf

    from janus_lab.experiment3d.settings import prior_camera_overrides

    data = OmegaConf.to_container(OmegaConf.from_dotlist(prior_camera_overrides()))["data"]
    assert fast3d.CameraSettings.from_data_block(data, 16) == dataclasses.replace(
        prior_framed(fast3d.CameraSettings()), height=16, width=16)
    with pytest.raises(ConfigError, match="cameras"):
        FastSettings(cameras="world")
    with pytest.raises(ConfigError, match="cameras"):
        Representation.from_config(volume, max_steps=100, preset="world")
    with pytest.raises(ConfigError, match="camera_options"):
        calibrate(str(tmp_path), CalibrationGrid([2], [0.1], camera_options=["world"]))
    with pytest.raises(ConfigError, match="latent"):
        calibrate(str(tmp_path), CalibrationGrid([2], [0.1], volumes=["grid24"], reconstruction=True))


def test_lab_sweep_finds_threestudio_in_the_checkout_it_is_run_from(tmp_path, monkeypatch):
    """The runs' PYTHONPATH: the threestudio checkout lab_sweep.py is run from (``python script.py``
    does not put the working folder on sys.path, so find_spec alone misses it), else an installed
    threestudio; with neither, the sweep stops before launching any run, saying what to do."""
    import importlib.util

    sys.path.insert(0, LAB_SCRIPTS)
    try:
        import lab_sweep
    finally:
        sys.path.pop(0)
    checkout = tmp_path / "threestudio-checkout"
    os.makedirs(checkout / "threestudio")
    (checkout / "launch.py").write_text("")
    (checkout / "threestudio" / "__init__.py").write_text("")
    assert lab_sweep.threestudio_root(str(checkout)) == str(checkout)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert lab_sweep.threestudio_root(str(tmp_path)) is None
    monkeypatch.chdir(tmp_path)
    launched = []
    monkeypatch.setattr(lab_sweep, "run_sweep", lambda *a, **k: launched.append(a))
    with pytest.raises(SystemExit, match="threestudio not found"):
        lab_sweep.main(["--variants", "baseline", "--prompts", "a bear", "--out", str(tmp_path / "out")])
    assert not launched
