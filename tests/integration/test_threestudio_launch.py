"""Every shipped config that can run on a CPU goes through threestudio's own `launch.py --train`
(the CPU mode: scripts/threestudio_cpu.py, overrides derived from each config) for a few steps with tiny random-weight models.

Runs only when the real threestudio is importable (marker `threestudio`); see README,
"Integration tests with threestudio". GPU-only configs are listed in GPU_ONLY with the reason.
"""

import csv
import glob
import math
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO  # noqa: E402
from fakes import launcher_env  # noqa: E402,F401  (also used by test_guidance_launch)

pytestmark = pytest.mark.threestudio

ROOT = REPO
RUNNER = os.path.join(ROOT, "scripts", "threestudio_cpu.py")

# the CPU overrides come from the runner itself (derived from each config); --small: 32x32
CPU = ["--small", "trainer.log_every_n_steps=1", "trainer.val_check_interval=100"]

DNP = ["system.prompt_processor.captioner={blip}", "system.prompt_processor.dns_steps=2",
       "system.prompt_processor.dns_half_precision=false"]
VSD = ["system.guidance.pretrained_model_name_or_path_lora={sd}"]  # the LoRA branch's model: one shared UNet
CONFIGS = {  # config -> (extra overrides given the model folders, diagnostics that must be logged)
    "perp-neg-nerf-sd.yaml": ([], ["perp_neg/mean_neg_weight", "perp_neg/mean_abs_proj", "unet_rows"]),
    "dsds-nerf-sd.yaml": ([], ["dsds/clip_threshold", "dsds/clipped_fraction"]),
    "perp-neg-dsds-nerf-sd.yaml": ([], ["dsds/clip_threshold", "perp_neg/mean_neg_weight"]),
    "dsds-full-nerf-sd.yaml": (["system.prompt_processor.debias_model={bert}",
                                "system.prompt_processor.protected_words=[corgi]"], ["dsds/clip_threshold"]),
    "dnp-nerf-sd.yaml": (DNP, ["unet_rows"]),
    "dnp-perp-neg-nerf-sd.yaml": (DNP, ["perp_neg/mean_neg_weight"]),
    "dnp-perp-neg-negative-nerf-sd.yaml": (DNP, ["perp_neg/mean_neg_weight"]),
    "dsds-nerf-if.yaml": (["system.prompt_processor.pretrained_model_name_or_path={if}",
                          "system.guidance.pretrained_model_name_or_path={if}"],
                         ["dsds/clip_threshold", "perp_neg/mean_neg_weight"]),
    "magic3d-coarse-dsds-sd.yaml": ([], ["dsds/clip_threshold", "perp_neg/mean_neg_weight"]),
    "dsds-sjc-sd.yaml": (["system.prompt_processor.debias_model={bert}"], ["dsds/clip_threshold", "unet_rows"]),
    "perp-neg-vsd-sd.yaml": (VSD, ["loss_lora", "perp_neg/mean_neg_weight"]),
    "perp-neg-dsds-vsd-sd.yaml": (VSD + ["system.prompt_processor.debias_model={bert}",
                                         "system.prompt_processor.protected_words=[corgi]"],
                                  ["loss_lora", "dsds/clip_threshold", "perp_neg/mean_neg_weight"]),
}
GPU_ONLY = {
    "magic3d-refine-dsds-sd.yaml": "mesh refinement rasterises with nvdiffrast (CUDA/OpenGL)",
}
# files the prompt processors write inside the run's trial folder
TRIAL_FILES = {
    "dsds-full-nerf-sd.yaml": ["prompt-debiasing.json"],
    "perp-neg-dsds-vsd-sd.yaml": ["prompt-debiasing.json"],  # written at the first step (processor made in configure)
    "dnp-nerf-sd.yaml": ["dnp/dnp.json", "dnp/dns-image.png"],
}


def test_every_shipped_config_is_covered():
    shipped = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))}
    assert shipped == set(CONFIGS) | set(GPU_ONLY)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_sd, tiny_if):
    from antijanus.testing.tiny_models import make_bert, make_blip

    work = tmp_path_factory.mktemp("threestudio-run")
    os.makedirs(work / "custom")
    os.symlink(os.path.join(ROOT, "custom", "antijanus"), work / "custom" / "antijanus")
    words = "this image is depicting a view of front side back top corgi".split()
    models = {"sd": tiny_sd, "if": tiny_if, "bert": make_bert(str(work / "bert"), words),
              "blip": make_blip(str(work / "blip"))}
    return work, models


def launch(workspace, config, tag, steps, extra=(), log=None):
    """Train ``config`` for ``steps`` through the CPU mode; ``log`` (a list) receives the output."""
    work, models = workspace
    env = launcher_env()
    args = [sys.executable, RUNNER, "--config", os.path.join(ROOT, "configs", config), "--train",
            f"exp_root_dir={work}/outputs", "name=itest", f"tag={tag}", "use_timestamp=false",
            f"trainer.max_steps={steps}", f"checkpoint.every_n_train_steps={steps}",
            "system.prompt_processor.prompt=a corgi",
            f"system.prompt_processor.pretrained_model_name_or_path={models['sd']}",
            f"system.guidance.pretrained_model_name_or_path={models['sd']}", *CPU,
            *[e.format(**models) for e in extra]]
    result = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    if log is not None:
        log.append(result.stdout + result.stderr)
    trial = work / "outputs" / "itest" / tag
    rows = list(csv.DictReader(open(trial / "csv_logs" / "version_0" / "metrics.csv")))
    return trial, rows


def logged(rows, key):
    return {int(r["step"]): float(r[f"train/{key}"]) for r in rows if r.get(f"train/{key}")}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_config_trains_through_the_real_launcher(workspace, config):
    extra, diagnostics = CONFIGS[config]
    trial, rows = launch(workspace, config, config[:-5], steps=3, extra=extra)
    losses = logged(rows, "loss_vsd" if "-vsd-" in config else "loss_sds")
    assert sorted(losses) == [0, 1, 2] and all(math.isfinite(v) for v in losses.values())
    for key in diagnostics:
        assert len(logged(rows, key)) == 3, key
    assert os.path.exists(trial / "ckpts" / "last.ckpt")
    for name in TRIAL_FILES.get(config, []):
        assert os.path.exists(trial / name), name


def test_resumed_run_clips_with_the_same_threshold(workspace):
    fixed = ["system.guidance.clip_end_step=10"]  # 2.0 -> 8.0 over steps 0..10
    first, _ = launch(workspace, "dsds-nerf-sd.yaml", "resume-a", steps=3, extra=fixed)
    _, rows = launch(workspace, "dsds-nerf-sd.yaml", "resume-b", steps=5,
                     extra=fixed + [f"resume={first}/ckpts/last.ckpt"])
    _, full = launch(workspace, "dsds-nerf-sd.yaml", "resume-full", steps=5, extra=fixed)
    # (Lightning's CSV "step" of a resumed run lags by one; compare the values in order.)
    resumed = [v for _, v in sorted(logged(rows, "dsds/clip_threshold").items())]
    uninterrupted = [v for _, v in sorted(logged(full, "dsds/clip_threshold").items())]
    assert len(resumed) == 2 and len(uninterrupted) == 5
    assert resumed == uninterrupted[3:]  # global steps 3 and 4, bit for bit
    assert resumed == pytest.approx([2.0 + 6.0 * 3 / 10, 2.0 + 6.0 * 4 / 10])


def test_metrics_of_a_run_rendered_from_its_checkpoint(workspace, tmp_path):
    """The metrics tool renders a 4-view orbit from the run's checkpoint with the launcher's
    --test (into its own trial folder, not the training's test renders) and evaluates it."""
    from antijanus.tools.evaluate import MetricSettings, evaluate_run, orbit_folder
    from antijanus.testing.tiny_models import make_clip

    work, _ = workspace
    trial, _ = launch(workspace, "perp-neg-nerf-sd.yaml", "metrics", steps=2)
    settings = MetricSettings(n_views=4, clip_model=make_clip(str(tmp_path / "clip")), random_lpips=True,
                              preprocess="none", distractors=["a cat"], device="cpu")
    metrics = evaluate_run(str(trial), settings, launch=[sys.executable, RUNNER], cwd=work, env=launcher_env())
    folder = orbit_folder(str(trial), 4)
    assert folder == str(trial / "metrics" / "orbit-n4" / "save" / "it2-test")
    assert sorted(os.listdir(folder))[:4] == ["0.png", "1.png", "2.png", "3.png"]
    assert len(os.listdir(trial / "save" / "it2-test")) >= 2  # training's own 2-view test, untouched
    assert metrics["n_views"] == 4 and math.isfinite(metrics["a_lpips"]) and metrics["a_lpips"] >= 0


@pytest.mark.parametrize("config, extra, work", [
    ("dsds-full-nerf-sd.yaml", CONFIGS["dsds-full-nerf-sd.yaml"][0], "prompt debiasing"),
    ("dnp-nerf-sd.yaml", CONFIGS["dnp-nerf-sd.yaml"][0], "diffusion-negative sampling"),
])
def test_two_ranks_share_rank_zeros_prompt_work(workspace, config, extra, work):
    """--gpu 0,1 in the CPU mode: two ranks (DDP over gloo) train; only rank 0 runs BERT-PMI /
    DNS, rank 1 reads rank 0's cache, and both train with identical view prompts."""
    output = []
    _, rows = launch(workspace, config, f"ranks-{config[:-5]}", steps=2,
                     extra=["--gpu", "0,1", "system.prompt_processor.use_cache=false", *extra], log=output)
    text = output[0]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text and "distributed_backend=gloo" in text
    assert f"antijanus rank 0: {work} computed" in text
    assert f"antijanus rank 1: {work} read from the cache" in text
    assert f"antijanus rank 1: {work} computed" not in text
    prompts = {}
    for line in text.splitlines():
        found = re.search(r"antijanus rank (\d): (view prompts .*)$", line)
        if found:
            prompts.setdefault(found.group(1), set()).add(found.group(2))
    assert set(prompts) == {"0", "1"} and prompts["0"] == prompts["1"]
    assert len(logged(rows, "loss_sds")) == 2
