"""A run resumed with another trainer.max_steps than the run that wrote its checkpoint: the D-SDS
clip schedule stretched over trainer.max_steps would change at every step with no note; one
warning names the keys (adapters/resumed_run.py)."""

import types

import pytest
import torch

import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)

from fakes import SYSTEM_CAMERAS
from helpers import make_prompt_output


class ResumedSystem:
    """A threestudio system whose running trainer resumes from ``ckpt_path``."""

    def __init__(self, guidance, max_steps, ckpt_path):
        self.guidance = guidance
        self._trainer = types.SimpleNamespace(max_steps=max_steps, ckpt_path=ckpt_path)

    def on_train_batch_start(self, global_step):
        self.guidance.do_update_step(0, global_step)

    def training_step(self):
        return self.guidance(torch.rand(2, 16, 16, 3), make_prompt_output(), **SYSTEM_CAMERAS)


def written_run(tmp_path, max_steps, guidance_block="{}"):
    """A trial folder as threestudio leaves it: configs/parsed.yaml and ckpts/last.ckpt."""
    trial = tmp_path / "outputs" / "dsds" / "a_corgi@20250101-000000"
    (trial / "configs").mkdir(parents=True)
    (trial / "ckpts").mkdir()
    (trial / "configs" / "parsed.yaml").write_text(
        f"trainer:\n  max_steps: {max_steps}\nsystem:\n  guidance: {guidance_block}\n")
    (trial / "ckpts" / "last.ckpt").write_bytes(b"")
    return str(trial / "ckpts" / "last.ckpt")


@pytest.fixture
def warnings(monkeypatch):
    found = []
    monkeypatch.setattr(threestudio, "warn", found.append)
    return found


def dsds(tiny_sd, **keys):
    return threestudio.find("dsds-guidance")({"pretrained_model_name_or_path": tiny_sd,
                                              "half_precision_weights": False, **keys})


def test_raising_max_steps_on_resume_is_one_warning_naming_the_keys(tiny_sd, tmp_path, warnings):
    ckpt = written_run(tmp_path, max_steps=1000)
    system = ResumedSystem(dsds(tiny_sd), max_steps=2000, ckpt_path=ckpt)
    for step in (500, 501):
        system.on_train_batch_start(step)
        out = system.training_step()
    assert out["dsds/clip_threshold"] == pytest.approx(2.0 + 6.0 * 501 / 2000)  # the new length acts
    changed = [w for w in warnings if "resumed from" in w]
    assert len(changed) == 1, warnings
    assert "trainer.max_steps = 2000" in changed[0] and "over 1000 steps (trainer.max_steps in" in changed[0]
    assert "threshold at the resumed step 500 is 3.5 instead of 5" in changed[0]
    assert "set system.guidance.clip_end_step=1000" in changed[0]


def test_a_resume_with_the_same_length_or_an_explicit_end_says_nothing(tiny_sd, tmp_path, warnings):
    ckpt = written_run(tmp_path, max_steps=1000)
    ResumedSystem(dsds(tiny_sd), max_steps=1000, ckpt_path=ckpt).on_train_batch_start(500)
    # clip_end_step set: the schedule does not follow trainer.max_steps
    ResumedSystem(dsds(tiny_sd, clip_end_step=1000), max_steps=2000, ckpt_path=ckpt).on_train_batch_start(500)
    # a fresh run, or a checkpoint outside threestudio's layout: nothing to compare with
    ResumedSystem(dsds(tiny_sd), max_steps=2000, ckpt_path=None).on_train_batch_start(0)
    ResumedSystem(dsds(tiny_sd), max_steps=2000, ckpt_path=str(tmp_path / "x.ckpt")).on_train_batch_start(5)
    assert not [w for w in warnings if "resumed from" in w]


def test_the_original_runs_own_end_step_counts(tiny_sd, tmp_path, warnings):
    """The run that wrote the checkpoint set clip_end_step: 1500; this one follows max_steps."""
    ckpt = written_run(tmp_path, max_steps=1000, guidance_block="{clip_end_step: 1500}")
    ResumedSystem(dsds(tiny_sd), max_steps=2000, ckpt_path=ckpt).on_train_batch_start(500)
    changed = [w for w in warnings if "resumed from" in w]
    assert len(changed) == 1 and "over 1500 steps (system.guidance.clip_end_step in" in changed[0]


def test_sqrt_anneal_resumed_with_another_length_is_said(tiny_sd, tmp_path, warnings):
    ckpt = written_run(tmp_path, max_steps=1000)
    guidance = threestudio.find("perp-neg-sds-guidance")(
        {"pretrained_model_name_or_path": tiny_sd, "half_precision_weights": False, "sqrt_anneal": True})
    ResumedSystem(guidance, max_steps=4000, ckpt_path=ckpt).on_train_batch_start(100)
    changed = [w for w in warnings if "resumed from" in w]
    assert len(changed) == 1 and "sqrt_anneal over 1000 steps" in changed[0]
    assert "set system.guidance.trainer_max_steps=1000" in changed[0]
