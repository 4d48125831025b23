"""The lab's 3D experiment, launcher path (threestudio tier): the fast path's prompt outputs are
what threestudio's real processors give (stock, bert-pmi with the lab masked LM, dnp with the
lab captioner), and custom/janus_lab/scripts/lab_sweep.py runs the sweep through threestudio's own launch.py (the
CPU mode) and judges the orbits (a smoke run: a few variants, 2 steps)."""

import json
import os
import sys

import pytest
import torch

from janus_lab.experiment3d.lab_models import LabModels
from janus_lab.experiment3d.prompts import PromptFactory
from janus_lab.experiment3d.variants import VARIANTS, load_config, variant_by_name
from janus_lab.prompt_output import DEFAULTS, DIRECTION_ORDER

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
LAB_SCRIPTS = os.path.join(REPO, "custom", "janus_lab", "scripts")

pytestmark = pytest.mark.threestudio


@pytest.fixture(scope="module", autouse=True)
def registered():
    import antijanus

    antijanus.register_threestudio_modules()


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    return PromptFactory(LabModels.default(), cache_dir=str(tmp_path_factory.mktemp("lab-cache")))


def real_output(kind, values, prompt):
    import threestudio

    return threestudio.find(kind)({**values, "prompt": prompt, "spawn": False})()


def test_defaults_are_the_processors_defaults():
    import threestudio

    for kind, defaults in DEFAULTS.items():
        config = threestudio.find(kind).Config()
        for key, value in defaults.items():
            real = getattr(config, key)
            real = dict(real) if isinstance(value, dict) else (list(real) if isinstance(value, list) else real)
            if isinstance(value, tuple):
                real = tuple(real)
            assert real == value, (kind, key)


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_fast_path_prompt_outputs_are_the_real_processors(variant, factory, tmp_path, monkeypatch):
    from antijanus.core.prompts import direction_indices

    monkeypatch.chdir(tmp_path)  # the processors cache under ./.threestudio_cache
    spec = variant_by_name(variant)
    cfg = load_config(spec.config, spec.overrides, 10)
    prompt = "a smiling bear"
    ours = factory(spec, prompt, 10)
    theirs = real_output(cfg.system.prompt_processor_type, factory.lab_block(cfg), prompt)
    assert list(theirs.prompts_vd) == ours.prompts_vd
    assert [d.name for d in theirs.directions] == list(DIRECTION_ORDER)
    for name in ("text_embeddings", "uncond_text_embeddings", "text_embeddings_vd", "uncond_text_embeddings_vd"):
        assert torch.allclose(getattr(theirs, name).float().cpu(), getattr(ours, name), atol=1e-5), name
    if hasattr(theirs, "empty_text_embeddings"):
        assert torch.allclose(theirs.empty_text_embeddings.float().cpu(), ours.empty_text_embeddings, atol=1e-5)
    assert theirs.use_perp_neg == ours.use_perp_neg
    for key in ("perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf"):
        assert tuple(getattr(theirs, key)) == getattr(ours, key)
    elevation = torch.tensor([-10.0, 0.0, 20.0, 45.0, 61.0, 80.0]).repeat_interleave(24)
    azimuth = torch.linspace(-180.0, 172.5, 48).repeat(3)
    distance = torch.full_like(elevation, 1.5)
    assert torch.equal(direction_indices(theirs, elevation, azimuth, distance),
                       direction_indices(ours, elevation, azimuth, distance))


@pytest.mark.parametrize("representation, variants", [("latent", ["perp-neg", "sjc-dsds", "dnp"]),
                                                     ("grid", ["baseline", "perp-neg"]),
                                                     ("rgb", ["baseline"])])
def test_lab_sweep_smoke(tmp_path, representation, variants):
    """custom/janus_lab/scripts/lab_sweep.py: on the Latent-NeRF system (the default) three variants (stock
    processor + Perp-Neg, SJC + prompt debiasing with the lab masked LM at 16x16 latents, DNP with
    the lab captioner), on the Latent-NeRF system with threestudio's volume-grid (the fast path's
    latent24) the baseline and Perp-Neg, on the RGB NeRF system the baseline; 2 steps each, a
    5-view orbit rendered from each checkpoint with launch.py --test, judged; the lab table and grids."""
    work = tmp_path / "threestudio"
    os.makedirs(work / "custom")
    os.symlink(os.path.join(REPO, "custom", "antijanus"), work / "custom" / "antijanus")
    sys.path.insert(0, LAB_SCRIPTS)
    try:
        import lab_sweep
    finally:
        sys.path.pop(0)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code = lab_sweep.main(["--out", str(tmp_path / "sweeps"), "--variants", *variants, "--prompts", "a smiling bear",
                               "--set", "trainer.max_steps=2", "trainer.val_check_interval=2", "--n-views", "5"]
                              + ([] if representation == "latent" else ["--representation", representation]))
    finally:
        os.chdir(cwd)
    assert code == 0
    name = {"latent": "janus-lab-3d-latent", "grid": "janus-lab-3d-grid", "rgb": "janus-lab-3d"}[representation]
    folder = tmp_path / "sweeps" / name
    table = (folder / "table.md").read_text()
    from omegaconf import OmegaConf

    for variant in variants:
        assert f"| {variant} | all prompts | 1 |" in table
        assert (folder / "grids" / f"{variant}.png").exists()
        run = run_folder(folder / "runs" / name, variant)
        metrics = json.loads((run / "metrics.json").read_text())
        assert {"janus", "face_in_back", "front_segments", "view_accuracy", "a_jfd", "judge_front_in_region"} <= set(metrics)
        assert metrics["n_frames"] == 4  # linspace(0, 360, 5): the last frame repeats the first
        parsed_text = (run / "configs" / "parsed.yaml").read_text()
        assert os.path.join(LabModels.default().prior) in parsed_text
        parsed = OmegaConf.load(run / "configs" / "parsed.yaml")
        expected_system = {"sjc-dsds": "sjc-system"}.get(
            variant, "dreamfusion-system" if representation == "rgb" else "latentnerf-system")
        assert parsed.system_type == expected_system
        if expected_system == "latentnerf-system":  # the shipped material block replaced whole
            assert parsed.system.material_type == "no-material" and parsed.system.geometry.n_feature_dims == 4
            assert set(parsed.system.material) == {"n_output_dims", "color_activation", "requires_normal"}
            assert parsed.data.width == 16
        if representation == "grid":  # threestudio's voxel grid, its block replaced whole
            assert parsed.system.geometry_type == "volume-grid"
            assert list(parsed.system.geometry.grid_size) == [24, 24, 24]
            assert parsed.system.geometry.density_bias == "blob" and parsed.system.renderer.radius == 1.0
            assert "pos_encoding_config" not in parsed.system.geometry
            assert parsed.system.optimizer.params.geometry.lr == 0.1
    if "dnp" in variants:
        dnp = json.loads((run_folder(folder / "runs" / name, "dnp") / "dnp" / "dnp.json").read_text())
        assert dnp["negative_prompt"]  # n* from the lab captioner
    if "sjc-dsds" in variants:
        assert (run_folder(folder / "runs" / name, "sjc-dsds") / "prompt-debiasing.json").exists()
    assert (folder / "results.csv").exists()  # the sweep's own collection too


def run_folder(runs, variant):
    """The one run folder of ``variant`` for "a smiling bear", seed 0 (its name ends in a hash of
    the run's identity)."""
    (found,) = runs.glob(f"{variant}--a_smiling_bear--s0--*")
    return found
