import logging
import math

import pytest
import torch

from antijanus.backbones import BackboneOptions, DeepFloydIFBackbone, StableDiffusionBackbone
from antijanus.core.dsds import ClipSchedule, clip_score
from antijanus.utils.errors import ConfigError
from antijanus.core.guidance import ScoreDistillationGuidance
from antijanus.core.guidance_config import DSDSConfig, ScoreDistillationConfig

from helpers import make_prompt_output
from fakes import CAMERAS, FakeBackbone


def dsds(model=None, config_type=DSDSConfig, **overrides):
    return ScoreDistillationGuidance(config_type(**overrides), "cpu", backbone=model or FakeBackbone())


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("linear", {0: 2.0, 2500: 3.5, 5000: 5.0, 10000: 8.0, 20000: 8.0}),
        ("cosine", {0: 2.0, 2500: 2.0 + 6.0 * (1 - math.cos(math.pi / 4)) / 2, 5000: 5.0, 10000: 8.0}),
        ("constant", {0: 2.0, 5000: 2.0, 10000: 2.0}),
    ],
)
def test_threshold_follows_the_schedule(kind, expected):
    guidance = dsds(clip_schedule=kind, trainer_max_steps=10000)  # SD defaults: 2.0 -> 8.0
    for step, value in expected.items():
        guidance.update_step(0, step)
        assert guidance.clip_threshold == pytest.approx(value)


def test_deepfloyd_defaults_and_explicit_steps():
    guidance = dsds(backbone="deepfloyd-if", clip_start_step=1000, clip_end_step=3000)
    assert guidance.resolved.guidance_scale == 20.0
    for step, value in {0: 0.5, 1000: 0.5, 2000: 1.25, 3000: 2.0, 9000: 2.0}.items():
        guidance.update_step(0, step)
        assert guidance.clip_threshold == pytest.approx(value)


def test_resumed_run_clips_like_an_uninterrupted_one():
    uninterrupted = dsds(trainer_max_steps=1000)
    for step in range(0, 738):
        uninterrupted.update_step(0, step)
    resumed = dsds(trainer_max_steps=1000)  # a fresh process loading a checkpoint at step 737
    resumed.update_step(0, 737, on_load_weights=True)
    assert resumed.clip_threshold == uninterrupted.clip_threshold == pytest.approx(2.0 + 6.0 * 0.737)


@pytest.mark.parametrize("target", ["residual", "gradient"])
def test_no_clipped_value_exceeds_the_steps_threshold(target):
    guidance = dsds(weighting_strategy="uniform", clip_target=target, trainer_max_steps=100,
                    guidance_scale=2.0)
    guidance.update_step(0, 50)  # psi = 5.0
    torch.manual_seed(0)
    latents = torch.randn(4, 8, 8, 4, requires_grad=True)
    out = guidance(latents, make_prompt_output(scale=4.0), **CAMERAS, rgb_as_latents=True)
    out["loss_sds"].backward()
    grad = latents.grad * 4  # d loss / d latents = grad / B; w(t) = 1
    assert grad.abs().max() <= 5.0 + 1e-6
    assert out["dsds/clip_threshold"] == pytest.approx(5.0)
    assert 0 < out["dsds/clipped_fraction"] < 1  # the clamp acts on some elements, not all
    assert (grad.abs() > 5.0 - 1e-6).float().mean() == pytest.approx(out["dsds/clipped_fraction"].item())


def test_residual_is_clipped_before_the_sds_weight():
    guidance = dsds(weighting_strategy="sds", clip_target="residual", trainer_max_steps=100)
    guidance.update_step(0, 0)  # psi = 2.0
    torch.manual_seed(0)
    latents = torch.randn(4, 8, 8, 4, requires_grad=True)
    guidance(latents, make_prompt_output(scale=4.0), **CAMERAS, rgb_as_latents=True)["loss_sds"].backward()
    torch.manual_seed(0)
    torch.randn(4, 8, 8, 4)  # replay the random stream: latents, then t
    t = torch.randint(guidance.min_step, guidance.max_step + 1, [4])
    w = 1 - guidance.backbone.alphas_cumprod[t]
    bound = (2.0 * w).view(-1, 1, 1, 1)
    grad = (latents.grad * 4).permute(0, 3, 1, 2).abs()
    assert (grad <= bound + 1e-6).all()
    assert ((grad - bound).abs() < 1e-6).any()  # some residuals were clipped at psi * w(t)


def test_clipping_disabled_is_bit_exact_with_unclipped_output():
    prompts = make_prompt_output(scale=4.0)
    results = []
    for overrides in ({"score_clipping": False},
                      {"score_clipping": True, "clip_schedule": "constant", "clip_start": 1e30}):
        guidance = dsds(**overrides)
        torch.manual_seed(3)
        latents = torch.randn(4, 8, 8, 4, requires_grad=True)
        out = guidance(latents, prompts, **CAMERAS, rgb_as_latents=True)
        out["loss_sds"].backward()
        results.append((out, latents.grad))
    (off, grad_off), (huge, grad_huge) = results
    assert torch.equal(off["loss_sds"], huge["loss_sds"]) and torch.equal(grad_off, grad_huge)
    assert "dsds/clip_threshold" not in off and huge["dsds/clipped_fraction"] == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"clip_start": 9.0, "clip_end": 8.0}, "clip_start.*must be <= clip_end"),
        ({"clip_start": -1.0}, "clip_start.*>= 0"),
        ({"clip_end": -2.0, "clip_start": -3.0}, "clip_start.*>= 0"),
        ({"clip_schedule": "exponential"}, "clip_schedule.*allowed values: 'linear', 'constant', 'cosine'"),
        ({"clip_target": "score"}, "clip_target.*allowed values: 'gradient', 'residual'"),
        ({"clip_start_step": 500, "clip_end_step": 100}, "clip_end_step.*must be > clip_start_step"),
    ],
)
def test_bad_clip_settings_fail_at_configuration(overrides, message):
    with pytest.raises(ConfigError, match=message):
        dsds(**overrides)


def test_clip_score_is_the_papers_clip():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.5])
    clipped, fraction = clip_score(x, 1.0)
    assert clipped.tolist() == [-1.0, -1.0, 0.0, 0.5, 1.0] and fraction.item() == pytest.approx(0.4)
    assert ClipSchedule("constant", 3.0, 1.0).validate()(123) == 3.0  # static: start only


def assert_trains_with_perp_neg_and_clipping(guidance, prompts, size, threshold):
    """One guided step on a batch of 4 renders: finite, non-zero gradients; Perp-Neg rows (13 for
    this camera batch) and the clip threshold of step 0."""
    rgb = torch.rand(4, size, size, 3, requires_grad=True)
    out = guidance(rgb, prompts, **CAMERAS)
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert out["unet_rows"] == 13 and out["dsds/clip_threshold"] == threshold


def test_perp_neg_and_dsds_together_on_tiny_stable_diffusion(tiny_sd):
    backbone = StableDiffusionBackbone(
        BackboneOptions(pretrained_model_name_or_path=tiny_sd, half_precision_weights=False), "cpu")
    for config_type, overrides in ((DSDSConfig, {"perp_neg": True}),
                                   (ScoreDistillationConfig, {"score_clipping": True})):
        guidance = dsds(backbone, config_type, trainer_max_steps=100, **overrides)
        assert_trains_with_perp_neg_and_clipping(guidance, make_prompt_output(), size=24, threshold=2.0)


def test_perp_neg_and_dsds_on_tiny_deepfloyd_if(tiny_if):
    backbone = DeepFloydIFBackbone(
        BackboneOptions(pretrained_model_name_or_path=tiny_if, half_precision_weights=False), "cpu")
    guidance = dsds(backbone, backbone="deepfloyd-if", perp_neg=True, trainer_max_steps=100)
    prompts = make_prompt_output(features=16)  # T5 embeddings of the tiny encoder
    assert_trains_with_perp_neg_and_clipping(guidance, prompts, size=32, threshold=0.5)


def test_deepfloyd_backbone_pixel_space_epsilon_and_t5(tiny_if):
    backbone = DeepFloydIFBackbone(
        BackboneOptions(pretrained_model_name_or_path=tiny_if, half_precision_weights=False), "cpu")
    x = backbone.to_model_space(torch.ones(1, 3, 40, 40))
    assert x.shape == (1, 3, 16, 16) and torch.allclose(x, torch.ones_like(x))  # [0,1] -> [-1,1]
    emb = backbone.encode_prompts(["", "a corgi, back view"])
    assert emb.shape == (2, 77, 16) and not torch.allclose(emb[0], emb[1])
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    eps = backbone.predict_noise(x_t, t, emb)
    with torch.no_grad():
        raw = backbone.unet(x_t, t, encoder_hidden_states=emb).sample
    assert raw.shape[1] == 6 and torch.allclose(eps, raw[:, :3])
    with pytest.raises(ConfigError, match="backbone.*deepfloyd-if.*no latent space.*rgb_as_latents"):
        backbone.to_model_space(torch.ones(1, 4, 8, 8), rgb_as_latents=True)


def test_latent_renders_on_deepfloyd_if_are_a_config_error_naming_the_key(tiny_if):
    """A system that renders latents (latentnerf) with an IF guidance: a ConfigError at the first
    step naming the key, not an error from a tensor op."""
    backbone = DeepFloydIFBackbone(
        BackboneOptions(pretrained_model_name_or_path=tiny_if, half_precision_weights=False), "cpu")
    guidance = dsds(backbone, trainer_max_steps=10)
    with pytest.raises(ConfigError, match=r"config key `backbone` = 'deepfloyd-if': has no latent space") as info:
        guidance(torch.randn(4, 8, 8, 4), make_prompt_output(features=16), **CAMERAS, rgb_as_latents=True)
    assert "stable-diffusion" in str(info.value)


def test_default_clip_is_the_recipe_of_the_sds_path_the_final_gradient():
    """dsds-guidance clips w(t)(eps_hat - eps) by default: the D-SDS authors' threestudio recipe
    (grad_clip [0, 2.0, 8.0, 10000]); the old default clipped eps_hat - eps before w(t)."""
    guidance = dsds(trainer_max_steps=100)  # weighting "sds": w(t) = 1 - abar_t < 1
    assert guidance.resolved.clip.target == "gradient"
    latents = torch.randn(4, 8, 8, 4, requires_grad=True)
    torch.manual_seed(0)
    guidance(latents, make_prompt_output(scale=4.0), **CAMERAS, rgb_as_latents=True)["loss_sds"].backward()
    grad = (latents.grad * 4).abs()
    assert grad.max() <= 2.0 + 1e-6 and ((grad - 2.0).abs() < 1e-6).any()  # psi itself is reached


def test_clip_schedule_without_a_known_run_length_is_refused_not_guessed():
    guidance = dsds()  # no clip_end_step, no trainer_max_steps, no trainer running
    with pytest.raises(ConfigError, match=r"clip_end_step.*trainer\.max_steps.*\$\{trainer\.max_steps\}"):
        guidance(torch.randn(4, 8, 8, 4), make_prompt_output(), **CAMERAS, rgb_as_latents=True)
    guidance.set_run_max_steps(1000)  # what the threestudio adapter does from the running trainer
    guidance.update_step(0, 500)
    assert guidance.clip_threshold == pytest.approx(5.0)
    with pytest.raises(ConfigError, match="clip_end_step.*without a step limit"):
        guidance.set_run_max_steps(-1)


def test_constant_clipping_needs_no_run_length():
    guidance = dsds(clip_schedule="constant", clip_start=3.0)
    out = guidance(torch.randn(4, 8, 8, 4), make_prompt_output(), **CAMERAS, rgb_as_latents=True)
    assert out["dsds/clip_threshold"] == 3.0


def test_clip_keys_without_score_clipping_warn_once(caplog):
    with caplog.at_level(logging.WARNING, logger="antijanus.core.guidance"):
        dsds(config_type=ScoreDistillationConfig, clip_start=1.0, clip_end_step=500)
    lines = [r.message for r in caplog.records]
    assert len(lines) == 1 and "clip_start, clip_end_step set but score_clipping is false" in lines[0]


def test_grad_clip_with_score_clipping_is_one_warning_naming_both(caplog):
    """The authors' threestudio recipe (grad_clip [0, 2.0, 8.0, 10000]) ported onto dsds-guidance
    would clip twice; one line says so and what to do."""
    with caplog.at_level(logging.WARNING, logger="antijanus.core.guidance"):
        guidance = dsds(grad_clip=[0, 2.0, 8.0, 10000], trainer_max_steps=100)
        guidance(torch.randn(4, 8, 8, 4), make_prompt_output(), **CAMERAS, rgb_as_latents=True)
    lines = [r.message for r in caplog.records]
    assert len(lines) == 1
    assert "grad_clip ([0, 2.0, 8.0, 10000]) and score_clipping: true both clip" in lines[0]
    assert "remove grad_clip, or set score_clipping: false" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="antijanus.core.guidance"):
        dsds(config_type=ScoreDistillationConfig, grad_clip=[0, 2.0, 8.0, 10000])  # threestudio's alone
        dsds(trainer_max_steps=100)  # D-SDS alone
    assert caplog.records == []
