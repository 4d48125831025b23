"""Infinite, NaN, non-numeric and absurd numbers in the guidance's keys: a ConfigError naming the
key for what cannot be a number, one warning naming the key and its sensible range for what no
recipe comes near, and an error naming the step for a step whose loss or gradient is not finite."""


import pytest
import torch

from antijanus.core.finite_check import FiniteWatch, NonFiniteStepError
from antijanus.core.guidance import ScoreDistillationGuidance
from antijanus.core.guidance_config import DSDSConfig, ScoreDistillationConfig, resolve_config
from antijanus.core.views import DecayWeight
from antijanus.utils.errors import ConfigError

from fakes import CAMERAS, FakeBackbone
from helpers import make_prompt_output

INF, NAN = float("inf"), float("nan")


def resolved(**keys):
    return resolve_config(ScoreDistillationConfig(backbone="stable-diffusion", **keys))


@pytest.mark.parametrize("keys, key", [
    ({"guidance_scale": INF}, "guidance_scale"),
    ({"guidance_scale": NAN}, "guidance_scale"),
    ({"negative_prompt_weight": INF}, "negative_prompt_weight"),
    ({"trainer_max_steps": INF}, "trainer_max_steps"),
    ({"score_clipping": True, "clip_start": 2.0, "clip_end": INF, "clip_end_step": 100}, "clip_end"),
    ({"score_clipping": True, "clip_end_step": INF}, "clip_end_step"),
    ({"score_clipping": True, "clip_start_step": NAN, "clip_end_step": 100}, "clip_start_step"),
    ({"grad_clip": INF}, "grad_clip"),
    ({"grad_clip": [0, 2.0, 8.0, INF]}, "grad_clip"),
    ({"min_step_percent": [0, 0.02, 0.5, NAN]}, "min_step_percent"),
    ({"perp_neg_f_fs": [4, 0.5, INF]}, "perp_neg_f_fs"),
    ({"perp_neg_f_sb": [1, 0.5, 0.0, NAN]}, "perp_neg_f_sb"),
    ({"overhead_negatives": {"front": INF}}, "overhead_negatives.front"),
])
def test_every_number_key_must_be_finite(keys, key):
    with pytest.raises(ConfigError, match=f"`{key}`") as caught:
        resolved(**keys)
    assert caught.value.key == key


@pytest.mark.parametrize("keys, key", [
    ({"perp_neg_f_fs": [4, "x", -2.426]}, "perp_neg_f_fs"),  # a ValueError naming nothing before
    ({"perp_neg_f_fs": "4,0.5,-2.426"}, "perp_neg_f_fs"),
    ({"perp_neg_f_fsb": 4}, "perp_neg_f_fsb"),
    ({"perp_neg_f_sf": [1, -1000, 0]}, "perp_neg_f_sf"),  # exp overflows
    ({"overhead_negatives": {"side": "x"}}, "overhead_negatives.side"),
    ({"guidance_scale": "100"}, "guidance_scale"),
])
def test_non_numbers_are_config_errors_naming_the_key(keys, key):
    with pytest.raises(ConfigError) as caught:
        resolved(**keys)
    assert caught.value.key == key
    if key == "perp_neg_f_fs" and isinstance(keys[key], list):
        assert "b = 'x' must be a number" in str(caught.value)


@pytest.mark.parametrize("keys, key, shown", [
    ({"guidance_scale": 1e30}, "guidance_scale", "(0, 1000]"),
    ({"guidance_scale": 5000.0}, "guidance_scale", "(0, 1000]"),
    ({"score_clipping": True, "clip_start": 0.0, "clip_end_step": 100}, "clip_start", ">= 0.1"),
    ({"score_clipping": True, "clip_start": 0.01, "clip_end": 0.05, "clip_end_step": 100}, "clip_start", ">= 0.1"),
    ({"grad_clip": [0, 0.0, 8.0, 100]}, "grad_clip", ">= 0.1"),
    ({"negative_prompt_weight": 50.0}, "negative_prompt_weight", "[0, 10]"),
    ({"perp_neg_f_fs": [40, 0.5, -2.426]}, "perp_neg_f_fs", "[0, 10]"),
    ({"overhead_negatives": {"back": 20}}, "overhead_negatives.back", "[0, 10]"),
])
def test_an_absurd_finite_value_is_one_warning_naming_the_key_and_its_range(keys, key, shown):
    warnings = [w for w in resolved(**keys).warnings if "sensible range" in w]
    assert len(warnings) == 1 or key == "clip_start", warnings
    assert warnings[0].startswith(f"`{key}` ") and f"sensible range {shown}:" in warnings[0]


def test_published_values_say_nothing():
    for keys in ({}, {"guidance_scale": 7.5}, {"guidance_scale": 1000.0}, {"negative_prompt_weight": 2.0},
                 {"perp_neg_preset": "stable-dreamfusion"}, {"grad_clip": [0, 0.5, 2.0, 10000]},
                 {"score_clipping": True, "clip_start": 0.5, "clip_end": 2.0, "clip_end_step": 10}):
        assert not [w for w in resolved(**keys).warnings if "sensible range" in w], keys
    # a constant schedule never uses clip_end
    constant = resolved(score_clipping=True, clip_schedule="constant", clip_start=2.0, clip_end=0.0)
    assert not [w for w in constant.warnings if "sensible range" in w]


def test_the_guidance_says_the_range_warning_once():
    messages = []
    config = DSDSConfig(backbone="stable-diffusion", guidance_scale=1e30, clip_end_step=10)
    guidance = ScoreDistillationGuidance(config, "cpu", backbone=FakeBackbone(), warn=messages.append)
    guidance.update_step(0, 1)
    guidance(torch.rand(2, 8, 8, 3), make_prompt_output(), **{k: v[:2] for k, v in CAMERAS.items()})
    assert len([m for m in messages if "guidance_scale" in m and "(0, 1000]" in m]) == 1


def test_decay_weight_peak_is_its_largest_value_on_the_unit_interval():
    assert DecayWeight(4.0, 0.5, -2.426).peak() == pytest.approx(1.574)
    assert DecayWeight(1.0, -1.0, 0.0).peak() == pytest.approx(2.718281828)  # rising: at x = 1
    assert DecayWeight(1.0, -1.0, 0.0, cutoff=0.5).peak() == pytest.approx(1.648721)
    assert DecayWeight(1.0, 0.0, 0.0, cutoff=-1.0).peak() == 0.0


# -- a step that is not finite ---------------------------------------------------------------

def test_a_non_finite_step_stops_the_run_naming_the_step_and_the_likely_key():
    """Before: loss_sds = inf at every step, and the run went on (exit 0)."""
    config = ScoreDistillationConfig(backbone="stable-diffusion", guidance_scale=1e30, perp_neg=False)
    guidance = ScoreDistillationGuidance(config, "cpu", backbone=FakeBackbone(), warn=lambda m: None)
    guidance.update_step(0, 7)
    cameras = {k: v[:2] for k, v in CAMERAS.items()}
    with pytest.raises(NonFiniteStepError) as caught:
        guidance(torch.rand(2, 8, 8, 3), make_prompt_output(), **cameras)
    error = caught.value
    assert error.step == 7 and "loss_sds" in error.names
    assert "global step 7" in str(error) and "guidance_scale" in str(error)
    assert error.suspects[0].startswith("guidance_scale (outside its sensible range")


def test_a_non_finite_render_is_named_as_such():
    guidance = ScoreDistillationGuidance(ScoreDistillationConfig(backbone="stable-diffusion", perp_neg=False),
                                         "cpu", backbone=FakeBackbone())
    rgb = torch.rand(2, 8, 8, 3)
    rgb[0, 0, 0, 0] = NAN
    with pytest.raises(NonFiniteStepError, match="renders passed to the guidance are not finite") as caught:
        guidance(rgb, make_prompt_output(), **{k: v[:2] for k, v in CAMERAS.items()})
    assert "rgb" in caught.value.names


def test_clipped_and_finite_steps_pass():
    guidance = ScoreDistillationGuidance(DSDSConfig(backbone="stable-diffusion", clip_end_step=10),
                                         "cpu", backbone=FakeBackbone())
    out = guidance(torch.rand(2, 8, 8, 3), make_prompt_output(), **{k: v[:2] for k, v in CAMERAS.items()})
    assert torch.isfinite(out["loss_sds"])


def test_the_watch_reads_each_step_once_and_reports_the_first_bad_one():
    watch = FiniteWatch()
    watch.record(0, {"loss_sds": torch.tensor(1.0)})
    assert watch.first_bad() is None and watch.first_bad() is None
    watch.record(1, {"loss_sds": torch.tensor(INF), "grad_norm": torch.tensor(2.0)})
    watch.record(2, {"loss_sds": torch.tensor(NAN), "grad_norm": torch.tensor(NAN)})
    assert watch.first_bad() == (1, ("loss_sds",))
    assert watch.first_bad() == (2, ("loss_sds", "grad_norm"))
    assert watch.first_bad() is None
