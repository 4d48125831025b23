"""The guidance inside threestudio's real launcher (threestudio tier): SJC with D-SDS clipping
through training, validation (the sjc system decodes latents with ``decode_latents``) and
``--test``; the clip schedule stretched over the run's own trainer.max_steps when clip_end_step
is unset, logged once; diagnostics logged without Lightning's float warnings."""

import csv
import os
import subprocess
import sys

import pytest

from test_threestudio_launch import CPU, ROOT, RUNNER, launcher_env, logged, workspace  # noqa: F401

pytestmark = pytest.mark.threestudio


def run(workspace, tag, *extra):
    work, models = workspace
    args = [sys.executable, RUNNER, "--config", os.path.join(ROOT, "configs", "dsds-sjc-sd.yaml"),
            f"exp_root_dir={work}/outputs", "name=guidance", f"tag={tag}", "use_timestamp=false",
            "system.prompt_processor.prompt=a corgi",
            f"system.prompt_processor.pretrained_model_name_or_path={models['sd']}",
            f"system.prompt_processor.debias_model={models['bert']}",
            f"system.guidance.pretrained_model_name_or_path={models['sd']}", *CPU, *extra]
    result = subprocess.run(args, cwd=work, env=launcher_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return work / "outputs" / "guidance" / tag, result.stdout + result.stderr


def test_sjc_with_dsds_trains_validates_and_tests_over_the_runs_own_length(workspace):
    trial, output = run(workspace, "sjc", "--train", "trainer.max_steps=3", "trainer.val_check_interval=2",
                        "checkpoint.every_n_train_steps=3", "system.guidance.clip_end_step=null")
    rows = list(csv.DictReader(open(trial / "csv_logs" / "version_0" / "metrics.csv")))
    # 2.0 -> 8.0 over the trainer's 3 steps (not over a 25000-step default)
    assert logged(rows, "dsds/clip_threshold") == pytest.approx({0: 2.0, 1: 4.0, 2: 6.0})
    assert output.count("D-SDS clipping of SJC's score") == 1
    assert "to step 3 (trainer.max_steps of the running trainer)" in output
    assert "should be floating point" not in output  # Lightning's warning for int-valued logs
    assert os.path.getsize(trial / "save" / "it2-0.png") > 0  # validation decoded the latents
    test_views = trial / "save" / "it3-test"
    for view in test_views.iterdir():
        view.unlink()
    run(workspace, "sjc", "--test", f"resume={trial}/ckpts/last.ckpt")  # a new process, no training
    assert sorted(os.listdir(test_views)) == ["0.png", "1.png"]
