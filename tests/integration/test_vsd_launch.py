"""Drop-in for VSD: threestudio's stock `prolificdreamer.yaml` (stage 1, NeRF), with only
`stable-diffusion-vsd-guidance` changed to `perp-neg-vsd-guidance`, trains 2 steps through
threestudio's own launch.py on a CPU (the CPU mode, tiny models) with `loss_vsd` and `loss_lora`
logged, the LoRA in the checkpoint and the optimizer group `guidance`, with
`system.visualize_samples=true` writes each validation view's samples (the pretrained model's and
the LoRA's, side by side), and resumes from that checkpoint. Runs only in the threestudio tier (marker `threestudio`)."""

import csv
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image
from helpers import REPO  # noqa: E402
from fakes import launcher_env, threestudio_root  # noqa: E402

pytestmark = pytest.mark.threestudio

RUNNER = os.path.join(REPO, "scripts", "threestudio_cpu.py")


def launch(work, config, tag, max_steps, *extra):
    args = [sys.executable, RUNNER, "--launch", os.path.join(threestudio_root(), "launch.py"),
            "--config", config, "--train", "--small", f"exp_root_dir={work}/outputs", "name=vsd", f"tag={tag}",
            "use_timestamp=false", f"trainer.max_steps={max_steps}", f"trainer.val_check_interval={max_steps}",
            "trainer.log_every_n_steps=1", "system.prompt_processor.prompt=a corgi", *extra]
    env = launcher_env(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    result = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return work / "outputs" / "vsd" / tag


def ported_prolificdreamer(work, tiny_sd):
    """threestudio's prolificdreamer.yaml with only the guidance type changed, in a workspace with
    the plugin in custom/; the model keys pointing at the tiny 512-capable folder."""
    text = open(os.path.join(threestudio_root(), "configs", "prolificdreamer.yaml")).read()
    ported, count = re.subn(r'(guidance_type: )"?stable-diffusion-vsd-guidance"?', r'\g<1>"perp-neg-vsd-guidance"', text)
    assert count == 1
    config = work / "prolificdreamer.yaml"
    config.write_text(ported)
    os.makedirs(work / "custom")
    os.symlink(os.path.join(REPO, "custom", "antijanus"), work / "custom" / "antijanus")
    os.symlink(os.path.join(threestudio_root(), "load"), work / "load")
    models = [f"system.guidance.pretrained_model_name_or_path={tiny_sd}",
              f"system.guidance.pretrained_model_name_or_path_lora={tiny_sd}",
              f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}"]
    return config, models


def test_dnp_processor_with_perp_neg_drives_vsd(tmp_path, tiny_sd):
    """The DNP processor (n* from a DNS image and a captioner) with Perp-Neg feeds VSD's
    pretrained branch: one step through launch.py, the DNP record in the trial folder."""
    from antijanus.testing.tiny_models import make_blip

    config, models = ported_prolificdreamer(tmp_path, tiny_sd)
    blip = make_blip(str(tmp_path / "blip"))
    trial = launch(tmp_path, str(config), "dnp", 1, *models, "system.prompt_processor_type=dnp-prompt-processor",
                   "system.prompt_processor.negative_prompt=auto", f"system.prompt_processor.captioner={blip}",
                   "system.prompt_processor.dns_steps=2", "system.prompt_processor.dnp_output_dir=\"{trial_dir}/dnp\"",
                   "system.prompt_processor.use_perp_neg=true")
    assert (trial / "dnp" / "dnp.json").exists()
    rows = list(csv.DictReader(open(trial / "csv_logs" / "version_0" / "metrics.csv")))
    assert [float(r["train/perp_neg/mean_neg_weight"]) for r in rows if r.get("train/perp_neg/mean_neg_weight")]
    assert all(math.isfinite(float(r["train/loss_vsd"])) for r in rows if r.get("train/loss_vsd"))


def test_stock_prolificdreamer_trains_and_resumes_with_only_the_type_name_changed(tmp_path, tiny_sd):
    config, models = ported_prolificdreamer(tmp_path, tiny_sd)
    trial = launch(tmp_path, str(config), "first", 2, *models, "system.visualize_samples=true")
    rows = list(csv.DictReader(open(trial / "csv_logs" / "version_0" / "metrics.csv")))
    for key in ("train/loss_vsd", "train/loss_lora"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
    checkpoint = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    lora = [k for k in checkpoint["state_dict"] if k.startswith("guidance.")]
    assert lora and all(k.startswith(("guidance.lora_layers.", "guidance.camera_embedding.")) for k in lora)
    groups = [g.get("name") for g in checkpoint["optimizer_states"][0]["param_groups"]]
    assert "guidance" in groups
    # prolificdreamer-system's visualize_samples: guidance.sample and sample_lora, one grid per view
    samples = sorted(p.name for p in (trial / "save").iterdir() if p.name.endswith("-sample.png"))
    assert "it2-0-sample.png" in samples, samples
    with Image.open(trial / "save" / "it2-0-sample.png") as grid:
        width, height = grid.size
        pixels = grid.convert("RGB").getextrema()
    assert width == 2 * height  # two images of the model's size side by side
    assert any(low < high for low, high in pixels)  # not a blank image
    launch(tmp_path, str(config), "resumed", 3, *models, f"resume={trial / 'ckpts' / 'last.ckpt'}")
