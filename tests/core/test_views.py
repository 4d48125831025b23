import math

import pytest
import torch

from antijanus.utils.errors import ConfigError
from antijanus.core.views import (
    BACK,
    FRONT,
    OVERHEAD,
    PERP_NEG_PRESETS,
    SIDE,
    DecayWeight,
    ViewRanges,
    classify_views,
    interpolation_ratio,
    overhead_negative_vector,
    plan_perp_neg,
)

# Published defaults (threestudio / Perp-Neg public code), computed by hand:
# azimuth -> (r, {view: negative weight}, {view: positive mixture})
PUBLISHED = {
    0: (1.0, {FRONT: 0.000123, SIDE: 1.574}, {FRONT: 1.0}),
    45: (0.5, {FRONT: 0.689203, SIDE: 0.689203}, {FRONT: 0.5, SIDE: 0.5}),
    90: (1.0, {SIDE: 0.000531, FRONT: 1.573531}, {SIDE: 1.0}),
    135: (0.5, {SIDE: 0.172801, FRONT: 1.745801}, {SIDE: 0.5, BACK: 0.5}),
    180: (0.0, {SIDE: 0.394, FRONT: 1.967}, {BACK: 1.0}),
}


@pytest.mark.parametrize("azimuth", sorted(PUBLISHED))
def test_published_weights_and_ratio(azimuth):
    r_expected, negatives, positives = PUBLISHED[azimuth]
    for signed in (azimuth, -azimuth, azimuth + 360):
        azi = torch.tensor([float(signed)])
        r, _ = interpolation_ratio(azi)
        assert r.item() == pytest.approx(r_expected, abs=1e-6)
        plan = plan_perp_neg(azi, torch.tensor([False]), PERP_NEG_PRESETS["threestudio"])
        for view in range(4):
            assert plan.negative_weight[0, view].item() == pytest.approx(negatives.get(view, 0.0), abs=2e-6)
            assert plan.positive_mix[0, view].item() == pytest.approx(positives.get(view, 0.0), abs=1e-6)


def test_stable_dreamfusion_preset_matches_its_source_rules():
    preset = PERP_NEG_PRESETS["stable-dreamfusion"]
    for azimuth in (0.0, 10.0, 30.0, 60.0, 85.0, 95.0, 120.0, 170.0, 180.0):
        a = azimuth
        if a < 90:
            r = 1 - a / 90
            front = 0.0 if r > 0.8 else math.exp(-r * 2) * 2
            side = 0.0 if r < 0.2 else math.exp(-(1 - r) * 10) * 2
        else:
            r = 1 - (a - 90) / 90
            front = 2.0
            side = 0.0 if r > 0.8 else math.exp(-r * 10) * 2 / 2
        plan = plan_perp_neg(torch.tensor([a]), torch.tensor([False]), preset)
        assert plan.negative_weight[0, FRONT].item() == pytest.approx(front, abs=1e-6)
        assert plan.negative_weight[0, SIDE].item() == pytest.approx(side, abs=1e-6)


def test_overhead_views_take_overhead_positive_and_configured_negatives():
    weights = overhead_negative_vector({"front": 1.5, "back": 0.25})
    plan = plan_perp_neg(torch.tensor([30.0, 30.0]), torch.tensor([True, False]),
                         PERP_NEG_PRESETS["threestudio"], weights)
    assert plan.positive_mix[0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert plan.negative_weight[0].tolist() == [1.5, 0.0, 0.25, 0.0]
    assert plan.positive_mix[1, OVERHEAD] == 0 and plan.negative_weight[1, FRONT] > 0


def test_classify_views_with_default_and_dsds_ranges():
    azimuth = torch.tensor([0.0, 30.0, -40.0, 90.0, 150.0, -170.0, 200.0, 10.0])
    elevation = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 75.0])
    default = classify_views(elevation, azimuth, ViewRanges())
    assert default.tolist() == [FRONT, FRONT, FRONT, SIDE, BACK, BACK, BACK, OVERHEAD]
    dsds = classify_views(elevation, azimuth, ViewRanges(front_half_width=22.5))
    assert dsds.tolist() == [FRONT, SIDE, SIDE, SIDE, BACK, BACK, BACK, OVERHEAD]


def test_bad_view_settings_raise_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="overhead_negatives.top.*allowed values: 'front', 'side', 'back'"):
        overhead_negative_vector({"top": 1.0})
    with pytest.raises(ConfigError, match="overhead_negatives.side.*>= 0"):
        overhead_negative_vector({"side": -1.0})
    with pytest.raises(ConfigError, match="perp_neg_f_sb.*negative weight"):
        DecayWeight.from_config("perp_neg_f_sb", [1.0, 0.5, -0.9])
    with pytest.raises(ConfigError, match="perp_neg_f_fs.*\\[a, b, c\\]"):
        DecayWeight.from_config("perp_neg_f_fs", [1.0, 0.5])
    with pytest.raises(ConfigError, match="front_half_width"):
        ViewRanges(front_half_width=120.0, back_half_width=90.0).validate()
    assert DecayWeight.from_config("k", [2, 2, 0, 0.8]) == DecayWeight(2.0, 2.0, 0.0, 0.8)
