import logging

import pytest
import torch

from antijanus.backbones import StableDiffusionBackbone, BackboneOptions
from antijanus.utils.errors import ConfigError
from antijanus.core.guidance import ScoreDistillationGuidance
from antijanus.core.guidance_config import ScoreDistillationConfig

from fakes import CAMERAS, FakeBackbone
from helpers import make_prompt_output


def guidance_with(model=None, **overrides):
    config = ScoreDistillationConfig(**overrides)
    return ScoreDistillationGuidance(config, "cpu", backbone=model or FakeBackbone())


def test_one_sds_step_end_to_end_on_tiny_stable_diffusion(tiny_sd):
    guidance = guidance_with(
        StableDiffusionBackbone(
            BackboneOptions(pretrained_model_name_or_path=tiny_sd, half_precision_weights=False), "cpu"
        )
    )
    rows_per_call = []
    predict = guidance.backbone.predict_noise
    guidance.backbone.predict_noise = lambda x, t, e: (rows_per_call.append(x.shape[0]), predict(x, t, e))[1]

    rgb = torch.rand(4, 24, 24, 3, requires_grad=True)
    out = guidance(rgb, make_prompt_output(), **CAMERAS)
    out["loss_sds"].backward()

    # one batched call: 4 positive + 4 unconditional + negatives 1 (front view: its own view is
    # the positive, so only `side`) + 2 + 2 + 0 (overhead: none by default) = 13 rows
    assert rows_per_call == [13] and out["unet_rows"] == 13
    assert torch.isfinite(out["loss_sds"]) and torch.isfinite(rgb.grad).all()
    assert rgb.grad.abs().sum() > 0
    expected_weight = (1.574 + 2 * 0.689203 + 0.394 + 1.967) / 4
    assert out["perp_neg/mean_neg_weight"].item() == pytest.approx(expected_weight, abs=1e-4)
    assert out["perp_neg/mean_abs_proj"] >= 0 and 20 <= out["min_step"] <= out["max_step"] == 980


def test_negatives_are_paired_with_their_own_samples_latent():
    guidance = guidance_with()
    prompts = make_prompt_output()
    x_t = torch.randn(4, 4, 8, 8)
    t = torch.tensor([100, 200, 300, 400])
    guided = guidance.guided_noise(x_t, t, prompts, **CAMERAS)
    batched, cond = guided.eps_hat, guided.cond
    assert cond.neg_index.tolist() == [0, 1, 1, 2, 2]
    for b in range(4):
        single = guidance.guided_noise(
            x_t[b:b + 1], t[b:b + 1], prompts, **{k: v[b:b + 1] for k, v in CAMERAS.items()}
        ).eps_hat
        assert torch.allclose(batched[b], single[0], atol=1e-5)


def test_guided_noise_matches_the_paper_equation_for_one_camera():
    backbone = FakeBackbone()
    guidance = guidance_with(backbone, guidance_scale=7.5)
    prompts = make_prompt_output()
    x_t = torch.randn(1, 4, 8, 8)
    cam = dict(elevation=torch.tensor([0.0]), azimuth=torch.tensor([135.0]), camera_distances=torch.tensor([2.0]))
    eps_hat = guidance.guided_noise(x_t, torch.tensor([500]), prompts, **cam).eps_hat

    e = {name: prompts.text_embeddings_vd[i] for name, i in prompts.direction2idx.items()}
    def eps(emb):
        return backbone.predict_noise(x_t, None, emb[None])[0]
    unc = eps(prompts.uncond_text_embeddings[0])
    e_pos = eps(0.5 * e["side"] + 0.5 * e["back"]) - unc
    expected = e_pos.clone()
    for view, w in (("side", 0.172801), ("front", 1.745801)):  # f_sb(0.5), f_fsb(0.5)
        e_i = eps(e[view]) - unc
        expected -= w * (e_i - (e_i * e_pos).sum() / (e_pos * e_pos).sum() * e_pos)
    assert torch.allclose(eps_hat[0], unc + 7.5 * expected, atol=1e-4)


def test_perp_neg_off_is_view_dependent_cfg_with_two_rows_per_sample():
    backbone = FakeBackbone()
    guidance = guidance_with(backbone, perp_neg=False, guidance_scale=5.0)
    prompts = make_prompt_output()
    x_t = torch.randn(4, 4, 8, 8)
    guided = guidance.guided_noise(x_t, torch.full((4,), 50), prompts, **CAMERAS)
    eps_hat, cond = guided.eps_hat, guided.cond
    assert backbone.calls == [8] and cond.num_rows == 8
    idx = prompts.direction2idx
    views = ["front", "side", "back", "overhead"]  # 45 is not < 45: side
    for b, view in enumerate(views):
        pos = backbone.predict_noise(x_t[b:b + 1], None, prompts.text_embeddings_vd[idx[view]][None])
        unc = backbone.predict_noise(x_t[b:b + 1], None, prompts.uncond_text_embeddings_vd[idx[view]][None])
        assert torch.allclose(eps_hat[b], (unc + 5.0 * (pos - unc))[0], atol=1e-5)


def test_negative_prompt_as_perp_neg_negative():
    prompts = make_prompt_output(negative_equals_empty=False)
    prompts.empty_text_embeddings = torch.zeros(1, 77, 32)
    backbone = FakeBackbone()
    guidance = guidance_with(backbone, negative_prompt_weight=0.5)
    x_t = torch.randn(4, 4, 8, 8)
    cond = guidance.guided_noise(x_t, torch.full((4,), 50), prompts, **CAMERAS).cond
    assert cond.num_rows == 13 + 4  # one negative-prompt row per sample
    batch = 4
    assert torch.equal(cond.embeddings[batch:2 * batch], torch.zeros(4, 77, 32))  # "" is unconditional
    assert torch.equal(cond.embeddings[-4:], prompts.uncond_text_embeddings_vd[[1, 1, 2, 3]])
    assert cond.neg_weight[-4:].tolist() == [0.5] * 4
    assert backbone.encoded == []  # the processor provided the "" embedding

    # an empty negative prompt adds nothing to evaluate; the "" embedding is encoded once
    plain = make_prompt_output()
    cond = guidance.guided_noise(x_t, torch.full((4,), 50), plain, **CAMERAS).cond
    cond = guidance.guided_noise(x_t, torch.full((4,), 50), plain, **CAMERAS).cond
    assert cond.num_rows == 13 and backbone.encoded == [[""]]


def test_grad_clip_bounds_the_sds_gradient():
    guidance = guidance_with(grad_clip=[0, 0.01, 0.05, 100], weighting_strategy="uniform")
    guidance.update_step(0, 50)
    torch.manual_seed(0)
    assert guidance.grad_clip_value == pytest.approx(0.03)
    latents = torch.randn(4, 8, 8, 4, requires_grad=True)  # rgb_as_latents: BHWC latents
    out = guidance(latents, make_prompt_output(scale=3.0), **CAMERAS, rgb_as_latents=True)
    out["loss_sds"].backward()
    per_element = latents.grad * 4  # d loss / d latents = grad / B
    assert per_element.abs().max() <= 0.03 * (1 + 1e-5)  # (grad / B) * B rounds
    assert per_element.abs().max() > 0.029  # the clamp is active, not vacuous


def test_timestep_schedules_follow_threestudio_conventions():
    guidance = guidance_with(min_step_percent=[0, 0.5, 0.02, 100], max_step_percent=0.98)
    guidance.update_step(0, 0)
    assert (guidance.min_step, guidance.max_step) == (500, 980)
    guidance.update_step(0, 50)
    assert guidance.min_step == 260
    guidance.update_step(0, 1000)
    assert guidance.min_step == 20
    annealed = guidance_with(sqrt_anneal=True, trainer_max_steps=100)
    annealed.update_step(0, 25)  # sqrt(0.25) = 0.5 -> halfway between 0.98 and 0.02
    assert annealed.min_step == annealed.max_step == 500


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("perp_neg_preset", "nope", "allowed values: 'threestudio', 'stable-dreamfusion'"),
        ("guidance_scale", -1.0, "must be > 0"),
        ("weighting_strategy", "sdss", "allowed values: 'sds', 'uniform', 'fantasia3d'"),
        ("negative_prompt_weight", -0.1, "must be >= 0"),
        ("min_step_percent", 1.5, r"values must lie in \[0.0, 1.0\]"),
        ("perp_neg_f_sf", [1.0, 0.5, -2.0], "negative weight"),
        ("overhead_negatives", {"top": 1.0}, "unknown view name"),
        ("max_step_percent", 1.0, "must stay below 1.0"),
        ("max_step_percent", [0, 0.98, 1.0, 500], "must stay below 1.0"),
        ("var_red", False, "has no effect without use_sjc"),
        ("backbone", "imagen", "allowed values"),
    ],
)
def test_bad_config_values_raise_before_loading(key, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        guidance_with(**{key: value})
    assert key in str(info.value)


def test_min_above_max_and_missing_model_folder():
    with pytest.raises(ConfigError, match="min_step_percent.*max_step_percent"):
        guidance_with(min_step_percent=0.9, max_step_percent=0.5)
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path.*does not exist"):
        ScoreDistillationGuidance(
            ScoreDistillationConfig(pretrained_model_name_or_path="/no/such/sd-folder"), "cpu"
        )


def test_v_prediction_models_are_converted_to_epsilon(tiny_sd_vpred):
    backbone = StableDiffusionBackbone(
        BackboneOptions(pretrained_model_name_or_path=tiny_sd_vpred, half_precision_weights=False), "cpu"
    )
    assert backbone.prediction_type == "v_prediction"
    x_t, t, emb = torch.randn(2, 4, 8, 8), torch.tensor([100, 900]), torch.randn(2, 77, 32)
    with torch.no_grad():
        v = backbone.unet(x_t, t, encoder_hidden_states=emb).sample
    abar = backbone.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * v + (1 - abar).sqrt() * x_t
    assert torch.allclose(backbone.predict_noise(x_t, t, emb), expected, atol=1e-5)
    assert not torch.allclose(expected, v, atol=1e-2)


@pytest.mark.parametrize(
    "min_percent, max_percent, message",
    [
        ([0, 0.5, 0.02, 100], [0, 0.3, 0.98, 100], "exceeds max_step_percent.*at step 0"),
        ([0, 0.1, 0.9, 1000], [0, 0.5, 0.6, 1000], "at step 1000 .0.9 > 0.6"),
        ([0, 0.1, 0.5, 2.0], 0.4, "at epoch 2"),
        ([0, 0.1, 0.3, 1000], [0, 0.9, 0.2, 3.0], "different units"),
    ],
)
def test_timestep_schedules_that_cross_fail_at_configuration(min_percent, max_percent, message):
    """torch.randint(min_step, max_step + 1) fails mid-training once min exceeds max."""
    with pytest.raises(ConfigError, match=message):
        guidance_with(min_step_percent=min_percent, max_step_percent=max_percent)


def test_schedules_that_stay_ordered_are_accepted():
    # threestudio's prolificdreamer-geometry.yaml and imagecondition_zero123nerf.yaml
    guidance_with(min_step_percent=0.02, max_step_percent=[5000, 0.98, 0.5, 5001])
    guidance_with(min_step_percent=[0, 0.4, 0.2, 200], max_step_percent=[0, 0.85, 0.5, 200])


def test_token_merging_params_without_token_merging_warn_once(caplog):
    with caplog.at_level(logging.WARNING, logger="antijanus.core.guidance"):
        guidance = guidance_with(token_merging_params={"ratio": 0.5})
        guidance(torch.randn(4, 8, 8, 4), make_prompt_output(), **CAMERAS, rgb_as_latents=True)
    assert [r.message for r in caplog.records] == [
        "token_merging_params set but token_merging is false: ToMe is off and token_merging_params "
        "has no effect (set token_merging: true)"]
