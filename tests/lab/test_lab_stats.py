"""The lab's statistics (janus_lab.stats: Wilson intervals, the exact McNemar test) and the orbit
azimuths (janus_lab.orbits.orbit_azimuths), against values worked out by hand."""

import math

import pytest
import torch

from janus_lab.orbits import orbit_azimuths
from janus_lab.stats import mcnemar_exact, wilson, wilson_rate

# ----------------------------------------------------------------------------- Wilson intervals


@pytest.mark.parametrize("successes, n, expected", [
    (5, 10, (0.2365896, 0.7634104)),  # the textbook example: 0.5 +- 0.2634
    (0, 10, (0.0, 0.2775402)),  # upper bound z^2 / (n + z^2)
    (10, 10, (0.7224598, 1.0)),
    (1, 1, (0.2065433, 1.0)),
    (27, 30, (0.7437856, 0.9654007)),  # p 0.9: centre 0.8546, half-width 0.1108
])
def test_wilson_known_values(successes, n, expected):
    assert wilson(successes, n) == pytest.approx(expected, abs=1e-6)


def test_wilson_matches_the_score_interval_formula_and_is_symmetric():
    z = 1.96
    for successes, n in ((3, 17), (12, 40), (1, 3)):
        p = successes / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert wilson(successes, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
        lo, hi = wilson(successes, n)
        mirrored = wilson(n - successes, n)
        assert (lo, hi) == pytest.approx((1 - mirrored[1], 1 - mirrored[0]), abs=1e-12)
        assert lo < p < hi
    narrow, wide = wilson(50, 100), wilson(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more trials, a narrower interval
    assert wilson(5, 10, z=2.576)[0] < wilson(5, 10)[0]  # 99 %: wider


def test_wilson_of_no_trials_is_nan_not_an_error():
    lo, hi = wilson(0, 0)
    assert math.isnan(lo) and math.isnan(hi)


def test_wilson_rate_counts_values_of_at_least_one_half_as_hits():
    rate, interval = wilson_rate([1.0, 0.0, 0.0, 1.0])
    assert rate == 0.5 and interval == wilson(2, 4)
    rate, interval = wilson_rate([0.5, 0.49, 1.0])  # 0.5 counts, 0.49 does not
    assert rate == pytest.approx(2 / 3) and interval == wilson(2, 3)
    rate, interval = wilson_rate([])
    assert math.isnan(rate) and all(math.isnan(v) for v in interval)


# ----------------------------------------------------------------------------- exact McNemar


@pytest.mark.parametrize("only_first, only_second, expected", [
    (0, 5, 2 / 2 ** 5),  # every discordant pair one way: 2 * 0.5^5
    (1, 9, 2 * (1 + 10) / 2 ** 10),
    (15, 3, 2 * (1 + 18 + 153 + 816) / 2 ** 18),  # the confirmatory round's Perp-Neg pairs: p 0.0075
    (5, 5, 1.0),  # a balanced split: capped at 1
    (0, 1, 1.0),  # one pair: 2 * 0.5 = 1
    (2, 3, 1.0),
])
def test_mcnemar_exact_known_p_values(only_first, only_second, expected):
    assert mcnemar_exact(only_first, only_second) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_is_symmetric_and_exact_for_many_pairs():
    for a, b in ((0, 7), (2, 11), (40, 25)):
        assert mcnemar_exact(a, b) == mcnemar_exact(b, a)
    assert mcnemar_exact(600, 400) < 1e-9  # exact integer sums: no overflow, no zero division
    assert 0.0 < mcnemar_exact(600, 400)


def test_mcnemar_exact_without_discordant_pairs_is_one():
    assert mcnemar_exact(0, 0) == 1.0


@pytest.mark.parametrize("only_first, only_second", [(-1, 3), (3, -1), (-2, -2)])
def test_mcnemar_exact_refuses_negative_counts(only_first, only_second):
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(only_first, only_second)


# ----------------------------------------------------------------------------- orbit azimuths


def test_orbit_azimuths_uniform_from_zero_without_the_end():
    az = orbit_azimuths(4)
    assert az.dtype == torch.float32 and az.tolist() == [0.0, 90.0, 180.0, 270.0]
    assert orbit_azimuths().shape == (36,) and orbit_azimuths()[1] == pytest.approx(10.0)


def test_orbit_azimuths_threestudio_mode_repeats_the_start_at_360():
    """``duplicate_end``: threestudio's test split, linspace(0, 360, n): the last frame is the
    first azimuth again, so n frames span n - 1 steps."""
    az = orbit_azimuths(5, duplicate_end=True)
    assert az.tolist() == [0.0, 90.0, 180.0, 270.0, 360.0]
    assert torch.equal(orbit_azimuths(37, duplicate_end=True)[:36], orbit_azimuths(36))
