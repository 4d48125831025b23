"""SDS pieces (core/sds.py) against their formulas: noising, w(t), the one-step x0 estimate, HiFA's
image gradient, the loss whose gradient is grad / B, threestudio's schedules and the timestep
range checks."""

import math

import pytest
import torch

from antijanus.core.sds import (
    add_noise,
    check_schedule,
    check_step_range,
    image_space_gradient,
    predicted_x0,
    scalar_schedule,
    schedule_breakpoints,
    sds_loss,
    sds_weight,
    sqrt_annealed_percent,
    timestep_range,
)
from antijanus.utils.errors import ConfigError

ABAR = torch.tensor([0.9, 0.25])  # one abar_t per sample


def test_add_noise_is_the_ddpm_forward_process_per_sample():
    x, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    x_t = add_noise(x, noise, ABAR)
    for b, abar in enumerate(ABAR.tolist()):
        assert torch.allclose(x_t[b], math.sqrt(abar) * x[b] + math.sqrt(1 - abar) * noise[b], atol=1e-6)


def test_predicted_x0_inverts_add_noise_given_the_true_noise():
    x, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.allclose(predicted_x0(add_noise(x, noise, ABAR), noise, ABAR), x, atol=1e-5)


@pytest.mark.parametrize("strategy, formula", [
    ("sds", lambda a: 1 - a),
    ("uniform", lambda a: torch.ones_like(a)),
    ("fantasia3d", lambda a: a.sqrt() * (1 - a)),
])
def test_sds_weight_follows_each_strategys_formula(strategy, formula):
    assert torch.allclose(sds_weight(ABAR, strategy), formula(ABAR))


def test_an_unknown_weighting_is_a_config_error_naming_the_key():
    allowed = "'sds', 'uniform', 'fantasia3d'"
    with pytest.raises(ConfigError, match=f"`weighting_strategy` = 'dreamfusion'.*{allowed}"):
        sds_weight(ABAR, "dreamfusion")


def test_image_space_gradient_is_hifas():
    image, denoised, w = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.tensor([0.5, 2.0])
    grad = image_space_gradient(image, denoised, w, ABAR)
    for b in range(2):
        abar = ABAR[b]
        expected = w[b] * (image[b] - denoised[b]) * abar.sqrt() / (1 - abar).sqrt()
        assert torch.allclose(grad[b], expected, atol=1e-6)


def test_sds_loss_has_gradient_grad_over_batch():
    latents, grad = torch.randn(4, 3, 2, 2, requires_grad=True), torch.randn(4, 3, 2, 2)
    loss = sds_loss(latents, grad)
    loss.backward()
    assert torch.allclose(latents.grad, grad / 4)
    assert loss.item() == pytest.approx(0.5 * grad.pow(2).sum().item() / 4, rel=1e-5)


@pytest.mark.parametrize("value, epoch, step, expected", [
    (0.3, 5, 500, 0.3),                           # a number
    ([0.98, 0.5, 1000], 0, 250, 0.86),            # [start, end, end_step]: from step 0
    ([200, 0.98, 0.5, 1000], 0, 100, 0.98),       # before start_step
    ([200, 0.98, 0.5, 1000], 0, 600, 0.74),       # halfway
    ([200, 0.98, 0.5, 1000], 0, 5000, 0.5),       # after end_step
    ([0, 0.0, 1.0, 4.0], 1, 10_000, 0.25),        # a float end step counts epochs
    ([0, 1.0, 2.0, 100, 4.0, 300], 0, 200, 3.0),  # piecewise: the second segment
    ([0, 1.0, 2.0, 100, 4.0, 300], 0, 50, 1.5),   # piecewise: the first segment
])
def test_scalar_schedule_follows_threestudios_c(value, epoch, step, expected):
    assert scalar_schedule(value, epoch, step) == pytest.approx(expected)


def test_a_schedule_of_five_entries_is_refused():
    with pytest.raises(ValueError, match="3, 4 or >= 6 entries"):
        scalar_schedule([0, 1, 2, 3, 4], 0, 0)


@pytest.mark.parametrize("value, message", [
    (None, "must be a number or a schedule list"),
    ([0, 1, 2, 3, 4], "a schedule needs 3, 4 or >= 6 entries"),
    ([0, 0.5, 1.5, 100], r"values must lie in \[0.0, 1.0\]"),
    (float("nan"), r"values must lie in \[0.0, 1.0\]"),
])
def test_check_schedule_names_the_key(value, message):
    with pytest.raises(ConfigError, match=f"`min_step_percent`.*{message}"):
        check_schedule("min_step_percent", value, 0.0, 1.0)


def test_schedule_breakpoints_and_their_unit():
    assert schedule_breakpoints(0.5) == ("const", [])
    assert schedule_breakpoints([0.9, 0.1, 100]) == ("step", [0.0, 100.0])
    assert schedule_breakpoints([10, 0.9, 0.1, 2.0]) == ("epoch", [10.0, 2.0])
    assert schedule_breakpoints([0, 1.0, 2.0, 100, 4.0, 300]) == ("step", [0.0, 100.0, 300.0])


def test_max_step_percent_of_one_is_refused_by_name():
    with pytest.raises(ConfigError, match="`max_step_percent` = 1.0: must stay below 1.0"):
        check_step_range("min_step_percent", 0.02, "max_step_percent", 1.0)
    check_step_range("min_step_percent", 0.02, "max_step_percent", 0.98)  # threestudio's default


def test_timestep_range_truncates_as_threestudio():
    assert timestep_range(1000, 0.02, 0.98) == (20, 980)
    assert timestep_range(1000, 0.0205, 0.9999) == (20, 999)


def test_sqrt_anneal_goes_from_max_to_min_as_sqrt_of_progress():
    assert sqrt_annealed_percent(0, 100, 0.02, 0.98) == pytest.approx(0.98)
    assert sqrt_annealed_percent(25, 100, 0.02, 0.98) == pytest.approx(0.02 + 0.96 * 0.5)
    assert sqrt_annealed_percent(100, 100, 0.02, 0.98) == pytest.approx(0.02)
    assert sqrt_annealed_percent(500, 100, 0.02, 0.98) == pytest.approx(0.02)  # past the end
