"""threestudio's processor-side Perp-Neg settings (issue 11 item 4) and what the processor
delivers at the first step (issue 12 items 4 and 6): truncated view prompts, an empty negative
prompt under negative_prompt_weight. Equality with threestudio's built-in Perp-Neg gradient is
checked in tests/integration/test_threestudio_parity.py."""

import logging

import pytest
import torch

from antijanus.core.guidance import ScoreDistillationGuidance
from antijanus.core.guidance_config import DSDSConfig, ScoreDistillationConfig, VSDConfig
from antijanus.utils.errors import ConfigError

from helpers import make_prompt_output
from fakes import CAMERAS, FakeBackbone
from helpers import REPO  # noqa: E402

THREESTUDIO_DEFAULTS = dict(perp_neg_f_sb=(1, 0.5, -0.606), perp_neg_f_fsb=(1, 0.5, 0.967),
                            perp_neg_f_fs=(4, 0.5, -2.426), perp_neg_f_sf=(4, 0.5, -2.426))
LOGGER = "antijanus.core.guidance"


def stock_output(use_perp_neg, **weights):
    """A PromptProcessorOutput as threestudio's stock processors make it (use_perp_neg and the
    four perp_neg_f_* tuples are always there)."""
    prompts = make_prompt_output()
    prompts.use_perp_neg = use_perp_neg
    for key, value in {**THREESTUDIO_DEFAULTS, **weights}.items():
        setattr(prompts, key, value)
    return prompts


def guidance_with(config_type=ScoreDistillationConfig, **overrides):
    return ScoreDistillationGuidance(config_type(**overrides), "cpu", backbone=FakeBackbone())


def step(guidance, prompts, seed=0):
    torch.manual_seed(seed)
    return guidance(torch.randn(4, 8, 8, 4), prompts, **CAMERAS, rgb_as_latents=True)


def negative_weights(guidance, prompts, azimuth):
    cams = dict(elevation=torch.tensor([0.0]), azimuth=torch.tensor([azimuth]), camera_distances=torch.tensor([2.0]))
    return guidance.build_conditioning(prompts, **cams).neg_weight.tolist()


@pytest.mark.parametrize("config_type", [ScoreDistillationConfig, DSDSConfig])
def test_unset_perp_neg_follows_the_processors_use_perp_neg(config_type, caplog):
    guidance = guidance_with(config_type, trainer_max_steps=10)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert step(guidance, stock_output(False))["unet_rows"] == 8  # plain view-dependent SDS
        assert step(guidance, stock_output(False))["unet_rows"] == 8
    lines = [r for r in caplog.records if "Perp-Neg" in r.message]
    assert [r.message for r in lines] == [  # one line, saying how to switch it on
        "Perp-Neg off (perp_neg unset: following the prompt processor's use_perp_neg: false; for "
        "Perp-Neg set use_perp_neg: true on the prompt processor or perp_neg: true on the guidance)"]
    assert lines[0].levelno == logging.INFO
    assert step(guidance, stock_output(True))["unet_rows"] == 13  # Perp-Neg rows


def test_a_processor_output_without_use_perp_neg_takes_the_names_default():
    assert step(guidance_with(), make_prompt_output())["unet_rows"] == 13  # perp-neg-sds-guidance
    assert step(guidance_with(DSDSConfig, trainer_max_steps=10), make_prompt_output())["unet_rows"] == 8


def test_the_processors_weights_are_used_unless_the_guidance_sets_its_own():
    custom = dict(perp_neg_f_sb=(2.0, 0.3, -0.5), perp_neg_f_fsb=(1.5, 1.0, 0.2))
    prompts = stock_output(True, **custom)
    # azimuth 135: r = 0.5, negatives (rows in view order) front f_fsb(0.5) and side f_sb(0.5)
    f = lambda a, b, c: a * torch.exp(torch.tensor(-b * 0.5)).item() + c  # noqa: E731
    expected = [f(*custom["perp_neg_f_fsb"]), f(*custom["perp_neg_f_sb"])]
    assert negative_weights(guidance_with(), prompts, 135.0) == pytest.approx(expected, rel=1e-6)
    own = guidance_with(perp_neg_f_sb=[1.0, 0.5, -0.606])
    assert negative_weights(own, prompts, 135.0) == pytest.approx([1.745801, 0.172801], abs=1e-5)


def test_a_conflict_is_one_logged_line_saying_which_wins(caplog):
    guidance = guidance_with(perp_neg=True, perp_neg_preset="stable-dreamfusion")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            assert step(guidance, stock_output(False))["unet_rows"] > 8  # the guidance wins: on
    lines = [r for r in caplog.records if "Perp-Neg" in r.message]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "perp_neg: true wins over the prompt processor's use_perp_neg: false" in lines[0].message

    caplog.clear()
    weights = guidance_with(perp_neg_f_sb=[2.0, 0.5, 0.0])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(2):
            step(weights, stock_output(True, perp_neg_f_sb=(1.5, 0.5, 0.0)))  # the user's weights
    lines = [r for r in caplog.records if "Perp-Neg" in r.message]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "perp_neg_f_* win over the prompt processor's perp_neg_f_*" in lines[0].message


def test_guidance_weights_over_the_processors_default_weights_are_one_info_line(caplog):
    """A shipped Perp-Neg config (processor-side switch, default weights) with
    system.guidance.perp_neg_preset=stable-dreamfusion: the guidance's weights, said once, no warning."""
    guidance = guidance_with(perp_neg_preset="stable-dreamfusion")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(2):
            assert step(guidance, stock_output(True))["unet_rows"] > 8
    lines = [r for r in caplog.records if "Perp-Neg" in r.message]
    assert [(r.levelno, r.message) for r in lines] == [(logging.INFO, (
        "Perp-Neg on, weights from the guidance's perp_neg_* keys (perp_neg unset: following the "
        "prompt processor's use_perp_neg: true)"))]


def test_explicit_perp_neg_false_wins_over_the_processor():
    guidance = guidance_with(perp_neg=False)
    assert step(guidance, stock_output(True))["unet_rows"] == 8


def test_truncated_view_prompts_stop_perp_neg_with_a_clear_error(caplog):
    prompts = make_prompt_output()
    prompts.text_embeddings_vd[:] = prompts.text_embeddings_vd[0].clone()  # "<77 tokens>, <cut off>"
    prompts.prompt = "a very long prompt"
    with pytest.raises(ConfigError, match=r"prompt_processor\.prompt.*same text embedding.*77 tokens"):
        step(guidance_with(), prompts)
    guidance = guidance_with(perp_neg=False)  # plain view-dependent prompting: one warning
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        step(guidance, prompts)
        step(guidance, prompts)
    assert len([r for r in caplog.records if "77 tokens" in r.message]) == 1


def test_negative_prompt_weight_with_an_empty_negative_prompt_warns_once(caplog):
    prompts = make_prompt_output()  # negative prompt embedding == "" embedding
    prompts.empty_text_embeddings = prompts.uncond_text_embeddings.clone()
    guidance = guidance_with(negative_prompt_weight=1.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        step(guidance, prompts)
        step(guidance, prompts)
    lines = [r.message for r in caplog.records if "negative_prompt_weight" in r.message]
    assert len(lines) == 1 and "negative prompt is empty" in lines[0]


@pytest.mark.parametrize("config_type, prompts", [
    (ScoreDistillationConfig, lambda: stock_output(False)),  # the stock processor says off
    (DSDSConfig, make_prompt_output),  # a processor without use_perp_neg: dsds-guidance is off
])
def test_perp_neg_keys_when_perp_neg_resolves_off_are_one_warning_naming_them(config_type, prompts, caplog):
    guidance = guidance_with(config_type, perp_neg_preset="stable-dreamfusion",
                             overhead_negatives={"front": 1.0}, trainer_max_steps=10)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(2):
            assert step(guidance, prompts())["unet_rows"] == 8  # off: plain view-dependent SDS
    lines = [r for r in caplog.records if "Perp-Neg" in r.message]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert ("perp_neg_preset, overhead_negatives set but Perp-Neg is off, so they have no effect"
            in lines[0].message)


def test_perp_neg_keys_with_perp_neg_false_warn_at_configuration(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        guidance = guidance_with(perp_neg=False, perp_neg_f_sb=[1.0, 0.5, 0.0])
    assert [r.message for r in caplog.records] == [
        "perp_neg_f_sb set but perp_neg is false: Perp-Neg is off and these keys have no effect "
        "(set perp_neg: true, or remove them)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        step(guidance, stock_output(False))
    assert caplog.records == []  # said once, at configuration


SHIPPED_PERP_NEG = {"perp-neg-nerf-sd.yaml", "perp-neg-dsds-nerf-sd.yaml", "magic3d-coarse-dsds-sd.yaml",
                    "magic3d-refine-dsds-sd.yaml", "dsds-nerf-if.yaml", "dnp-perp-neg-nerf-sd.yaml",
                    "dnp-perp-neg-negative-nerf-sd.yaml", "perp-neg-vsd-sd.yaml", "perp-neg-dsds-vsd-sd.yaml"}


def shipped_configs():
    import glob
    import os

    return sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_shipped_configs_decide_perp_neg_without_a_warning(path):
    """Each shipped config's guidance block behind the output its processor block gives (the
    processor's use_perp_neg, default false): Perp-Neg as the config intends, no conflict line."""
    import os

    from omegaconf import OmegaConf

    from antijanus.core.guidance_config import config_warnings, decide_perp_neg, resolve_config

    cfg = OmegaConf.load(path)
    block = OmegaConf.to_container(cfg.system.guidance, resolve=False)
    block = {k: v for k, v in block.items() if not (isinstance(v, str) and "${" in v)}
    config = {"perp-neg-sds-guidance": ScoreDistillationConfig, "dsds-guidance": DSDSConfig,
              "perp-neg-vsd-guidance": VSDConfig}[cfg.system.guidance_type](**block)
    processor = OmegaConf.to_container(cfg.system.prompt_processor, resolve=False)
    decision = decide_perp_neg(config, resolve_config(config), stock_output(processor.get("use_perp_neg", False)))
    assert decision.enabled == (os.path.basename(path) in SHIPPED_PERP_NEG)
    assert not decision.conflict, decision.message
    assert config_warnings(config) == []
