"""The registered threestudio module, against the real threestudio when importable, else the
stub in tests/threestudio_stub (same registry and BaseObject behaviour)."""

import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch

import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.utils.errors import ConfigError

from helpers import make_prompt_output

from fakes import FakeSystem  # noqa: E402

PACKAGE_DIR = os.path.dirname(antijanus.__file__)
CAMERAS = dict(
    elevation=torch.tensor([0.0, 15.0]),
    azimuth=torch.tensor([-100.0, 170.0]),
    camera_distances=torch.tensor([2.0, 2.0]),
)


def test_guidance_is_registered_and_runs_a_step(tiny_sd):
    cls = threestudio.find("perp-neg-sds-guidance")
    guidance = cls({"pretrained_model_name_or_path": tiny_sd, "half_precision_weights": False,
                    "guidance_scale": 50.0, "min_step_percent": [0, 0.5, 0.02, 100]})
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    # threestudio systems pass the whole camera batch as keyword arguments
    out = guidance(rgb, make_prompt_output(), **CAMERAS, rays_o=None, mvp_mtx=None, rgb_as_latents=False)
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and out["unet_rows"] == 2 * 2 + 4
    assert out["min_step"] == 500
    guidance.do_update_step(0, 100)  # what a threestudio system calls every step
    assert guidance(rgb, make_prompt_output(), **CAMERAS)["min_step"] == 20


def test_unknown_and_bad_keys_fail_at_configuration(tiny_sd):
    cls = threestudio.find("perp-neg-sds-guidance")
    with pytest.raises(Exception, match="guidance_scal"):
        cls({"pretrained_model_name_or_path": tiny_sd, "guidance_scal": 7.5})
    with pytest.raises(ConfigError, match="perp_neg_preset"):
        cls({"pretrained_model_name_or_path": tiny_sd, "perp_neg_preset": "magic"})


def test_launcher_style_second_import_does_not_conflict():
    """threestudio's launch.py executes custom/antijanus/__init__.py afresh as module
    `antijanus`; registering the same names again must not raise."""
    saved = {k: v for k, v in sys.modules.items() if k == "antijanus" or k.startswith("antijanus.")}
    try:
        for name in saved:
            del sys.modules[name]
        spec = importlib.util.spec_from_file_location("antijanus", os.path.join(PACKAGE_DIR, "__init__.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["antijanus"] = module
        spec.loader.exec_module(module)  # would raise "Module ... already exists!" unguarded
        assert threestudio.find("perp-neg-sds-guidance") is saved["antijanus.adapters"].PerpNegSDSGuidance
    finally:
        for name in [k for k in sys.modules if k == "antijanus" or k.startswith("antijanus.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_core_imports_without_threestudio():
    """Without threestudio (or before it is imported) the package imports and registers nothing."""
    code = (
        "import sys; sys.modules['threestudio'] = None\n"  # find_spec('threestudio') -> None
        "import antijanus, antijanus.core.guidance, antijanus.prompting.debias, antijanus.prompting.dnp\n"
        "assert 'antijanus.adapters' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.threestudio
def test_step_with_threestudios_stock_prompt_processor(tiny_sd, tmp_path, monkeypatch):
    """The real StableDiffusionPromptProcessor's PromptProcessorOutput drives the guidance."""
    monkeypatch.chdir(tmp_path)  # the processor caches embeddings under ./.threestudio_cache
    processor = threestudio.find("stable-diffusion-prompt-processor")(
        {"pretrained_model_name_or_path": tiny_sd, "prompt": "a corgi", "spawn": False,
         "negative_prompt": "blurry"}
    )
    prompt_utils = processor()
    assert prompt_utils.use_perp_neg is False  # the stock processor's default
    for perp_neg, rows in ((None, 2 + 2 + 2), (True, 2 + 2 + 4 + 2)):
        guidance = threestudio.find("perp-neg-sds-guidance")(
            {"pretrained_model_name_or_path": tiny_sd, "half_precision_weights": False,
             "negative_prompt_weight": 1.0, "perp_neg": perp_neg}
        )
        rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
        out = guidance(rgb, prompt_utils, **CAMERAS)
        out["loss_sds"].backward()
        assert torch.isfinite(rgb.grad).all()
        # 2 positive + 2 unconditional ("") + 1 negative prompt each, and with Perp-Neg on 2 view
        # negatives per sample; perp_neg unset follows the processor's use_perp_neg: false
        assert out["unet_rows"] == rows


def test_dsds_guidance_is_registered_with_clipping_on_and_perp_neg_off(tiny_sd):
    guidance = threestudio.find("dsds-guidance")(
        {"pretrained_model_name_or_path": tiny_sd, "half_precision_weights": False,
         "trainer_max_steps": 1000}
    )
    guidance.do_update_step(0, 500, on_load_weights=True)  # as when resuming from a checkpoint
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    out = guidance(rgb, make_prompt_output(), **CAMERAS)
    out["loss_sds"].backward()
    assert out["dsds/clip_threshold"] == pytest.approx(5.0)  # 2.0 -> 8.0, halfway
    assert out["unet_rows"] == 4  # plain SDS rows: Perp-Neg is off by default here
    assert torch.isfinite(rgb.grad).all()
    with pytest.raises(ConfigError, match="clip_start"):
        threestudio.find("dsds-guidance")({"pretrained_model_name_or_path": tiny_sd,
                                           "clip_start": 9.0, "clip_end": 1.0})


def test_clip_schedule_stretches_over_the_running_trainers_max_steps(tiny_sd, monkeypatch):
    """clip_end_step unset: the run's own trainer.max_steps, not a 25000-step guess."""
    messages = []
    monkeypatch.setattr(threestudio, "info", messages.append)
    guidance = threestudio.find("dsds-guidance")({"pretrained_model_name_or_path": tiny_sd,
                                                  "half_precision_weights": False})
    system = FakeSystem(guidance, max_steps=100)
    for step in (0, 50):
        system.on_train_batch_start(step)
        out = system.training_step(torch.rand(2, 16, 16, 3), make_prompt_output())
    assert out["dsds/clip_threshold"] == pytest.approx(5.0)  # 2.0 -> 8.0 over 100 steps, halfway
    schedule = [m for m in messages if "D-SDS clipping" in m]
    assert schedule == ["antijanus: D-SDS clipping of the final gradient w(t)(eps_hat - eps) (the D-SDS "
                        "authors' threestudio recipe): linear 2 -> 8 from step 0 to step 100 "
                        "(trainer.max_steps of the running trainer)"]


def test_guidance_messages_go_through_threestudios_logger(tiny_sd, monkeypatch):
    warnings = []
    monkeypatch.setattr(threestudio, "warn", warnings.append)
    prompts = make_prompt_output()
    prompts.use_perp_neg = False
    guidance = threestudio.find("perp-neg-sds-guidance")(
        {"pretrained_model_name_or_path": tiny_sd, "half_precision_weights": False, "perp_neg": True})
    for _ in range(2):
        guidance(torch.rand(2, 16, 16, 3), prompts, **CAMERAS)
    assert warnings == ["antijanus: Perp-Neg on, weights from the threestudio preset (set by the "
                        "guidance's perp_neg); the guidance's perp_neg: true wins over the prompt "
                        "processor's use_perp_neg: false"]


def test_schedule_and_config_warnings_reach_threestudios_logger(tiny_sd, monkeypatch):
    """clip_end_step set (every shipped config): the schedule is known when the module is
    configured, and that line, like the configuration-time warnings, goes through threestudio's
    logger (the module logger has no handler in a threestudio run: the line would be lost)."""
    infos, warnings = [], []
    monkeypatch.setattr(threestudio, "info", infos.append)
    monkeypatch.setattr(threestudio, "warn", warnings.append)
    guidance = threestudio.find("dsds-guidance")({"pretrained_model_name_or_path": tiny_sd,
                                                  "half_precision_weights": False, "clip_end_step": 100})
    system = FakeSystem(guidance, max_steps=100)
    for step in (0, 1, 2):
        system.on_train_batch_start(step)
        system.training_step(torch.rand(2, 16, 16, 3), make_prompt_output())
    assert [m for m in infos if "D-SDS clipping" in m] == [
        "antijanus: D-SDS clipping of the final gradient w(t)(eps_hat - eps) (the D-SDS authors' "
        "threestudio recipe): linear 2 -> 8 from step 0 to step 100 (clip_end_step)"]
    assert warnings == []
    threestudio.find("perp-neg-sds-guidance")({"pretrained_model_name_or_path": tiny_sd,
                                               "half_precision_weights": False, "clip_start": 1.0})
    assert warnings == ["antijanus: clip_start set but score_clipping is false: D-SDS clipping is off "
                        "and these keys have no effect (set score_clipping: true to clip)"]


def test_sqrt_anneal_stretches_over_the_running_trainers_max_steps(tiny_sd, monkeypatch):
    """trainer_max_steps: null (threestudio: 25000): HiFA's annealing runs over the run's own
    trainer.max_steps, said once; trainer_max_steps set reproduces threestudio's stretch."""
    messages = []
    monkeypatch.setattr(threestudio, "info", messages.append)
    guidance = threestudio.find("perp-neg-sds-guidance")(
        {"pretrained_model_name_or_path": tiny_sd, "half_precision_weights": False, "sqrt_anneal": True})
    system = FakeSystem(guidance, max_steps=100)
    for step in (0, 25):
        system.on_train_batch_start(step)
        out = system.training_step(torch.rand(2, 16, 16, 3), make_prompt_output())
    # t/T = 0.98 - (0.98 - 0.02) * sqrt(25 / 100) = 0.5
    assert out["min_step"] == out["max_step"] == 500.0
    assert [m for m in messages if "sqrt_anneal" in m] == [
        "antijanus: sqrt_anneal over 100 steps (trainer.max_steps of the running trainer)"]
    fixed = threestudio.find("perp-neg-sds-guidance")(
        {"pretrained_model_name_or_path": tiny_sd, "half_precision_weights": False, "sqrt_anneal": True,
         "trainer_max_steps": 25000})
    FakeSystem(fixed, max_steps=100).on_train_batch_start(25)
    assert fixed.min_step == fixed.max_step == 949  # 0.98 - 0.96 * sqrt(25 / 25000): the given length


def test_calling_system_is_the_nearest_caller_that_matches():
    from antijanus.adapters.registry import calling_system

    class Outer:
        marker = "outer"

        def run(self, inner):
            return inner.run()

    class Inner:
        marker = "inner"

        def run(self):
            return calling_system(lambda owner: getattr(owner, "marker", None) is not None)

    assert isinstance(Outer().run(Inner()), Inner)  # the nearest, the caller's own frame included

    class Middle:
        def run(self):
            return calling_system(lambda owner: getattr(owner, "marker", None) == "outer")

    assert isinstance(Outer().run(Middle()), Outer)

    class Shallow:
        def run(self):
            return calling_system(lambda owner: getattr(owner, "marker", None) == "outer", depth=1)

    assert Outer().run(Shallow()) is None  # Outer is two frames up
    assert calling_system(lambda owner: False) is None
