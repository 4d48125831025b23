"""The VSD step on the one guidance path (core/vsd_guidance.py) on a tiny Stable Diffusion: its
gradient and LoRA loss against core/vsd.py's functions, Perp-Neg at batch 4 equal to per-sample
runs, D-SDS clipping on VSD's gradient, the LoRA trained through the step, one UNet or two, the
keys checked before any model loads, and the samples of both branches (system.visualize_samples)."""

import pytest
import torch

from antijanus.core.guidance_config import VSDConfig, resolve_config
from antijanus.core.sds import add_noise
from antijanus.core.vsd import (camera_cfg_rows, camera_condition, cfg_noise, clamp_gradient, lora_guided_noise,
                                lora_loss, lora_training_batch, vsd_gradient, vsd_loss)
from antijanus.core.vsd_guidance import VSDGuidance
from antijanus.utils.errors import ConfigError

from fakes import CAMERAS
from helpers import make_prompt_output

FEATURES = 32  # the tiny UNet's cross-attention size


def make_guidance(model, lora_model=None, **keys):
    config = VSDConfig(pretrained_model_name_or_path=model, pretrained_model_name_or_path_lora=lora_model or model,
                       half_precision_weights=False, **keys)
    guidance = VSDGuidance(config, "cpu")
    with torch.no_grad():  # a LoRA that has learned something: its deltas are not 0
        generator = torch.Generator().manual_seed(5)
        for parameter in guidance.lora.lora.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return guidance


@pytest.fixture(scope="module")
def guidance(tiny_sd):
    return make_guidance(tiny_sd)


def step_inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 8, 8, generator=g)
    noise = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.randint(20, 981, (batch,), generator=g)
    camera = torch.randn(batch, 16, generator=g)
    return latents, t, noise, camera


def cams(batch):
    return tuple(CAMERAS[k][:batch] for k in ("elevation", "azimuth", "camera_distances"))


def test_the_gradient_and_loss_are_core_vsd_with_the_cfg_pretrained_noise(guidance):
    latents, t, noise, camera = step_inputs()
    prompts = make_prompt_output(features=FEATURES)
    decision = guidance.perp_neg(prompts)
    assert not decision.enabled  # no use_perp_neg on the processor: off, as threestudio's VSD
    out = guidance.vsd_step(latents, None, t, noise, prompts, cams(2), camera, decision)

    abar = guidance.alphas_cumprod[t]
    x_t = add_noise(latents, noise, abar)
    direction = torch.tensor([1, 0])  # azimuth 0: front; 45: side (threestudio's directions)
    rows = guidance.backbone.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([
        prompts.text_embeddings_vd[direction], prompts.uncond_text_embeddings_vd[direction]]))
    eps_pre = cfg_noise(rows[:2], rows[2:], 7.5)  # threestudio's VSD scale keeps its value
    text = prompts.text_embeddings.expand(2, -1, -1)
    eps_lora = lora_guided_noise(guidance.lora.output, x_t, t, text, camera, 1.0,
                                 guidance.lora.alphas_cumprod[t], "epsilon")
    grad = clamp_gradient(vsd_gradient(eps_pre, eps_lora, abar), None)
    assert torch.allclose(out["grad_norm"], grad.norm(), rtol=1e-5)
    assert torch.allclose(out["loss_vsd"], vsd_loss(latents, grad), rtol=1e-5)
    assert out["unet_rows"] == 8 and out["min_step"] == 20 and out["max_step"] == 980
    assert float(out["perp_neg/mean_neg_weight"]) == 0


def test_the_lora_loss_is_core_vsd_lora_loss_on_the_same_draws(guidance):
    latents, _, _, camera = step_inputs(seed=1)
    text = make_prompt_output(features=FEATURES).text_embeddings.expand(2, -1, -1)
    for n in (1, 3):
        guidance.config.lora_n_timestamp_samples = n
        try:
            loss = guidance.train_lora(latents, text, camera, torch.Generator().manual_seed(3))
        finally:
            guidance.config.lora_n_timestamp_samples = 1
        batch = lora_training_batch(latents, text, camera, guidance.lora.alphas_cumprod, "epsilon", n, True,
                                    torch.Generator().manual_seed(3))
        assert batch.x_t.shape[0] == 2 * n
        assert torch.allclose(loss, lora_loss(guidance.lora.output, batch), rtol=1e-6)


def test_a_call_trains_the_lora_and_the_camera_and_pushes_the_renders(guidance):
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    c2w = torch.randn(2, 4, 4)
    out = guidance(rgb, make_prompt_output(features=FEATURES), *cams(2), mvp_mtx=None, c2w=c2w)
    assert {"loss_vsd", "loss_lora", "grad_norm", "min_step", "max_step"} <= set(out)
    for parameter in guidance.lora.parameters():
        parameter.grad = None
    out["loss_lora"].backward()
    assert rgb.grad is None  # the LoRA's loss never reaches the renders
    assert all(p.grad is not None for p in guidance.lora.camera.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in guidance.lora.lora.parameters())
    assert all(p.grad is None for p in guidance.backbone.unet.parameters())
    out["loss_vsd"].backward()
    assert rgb.grad.abs().sum() > 0


def test_the_camera_is_the_chosen_matrix_and_must_be_given(guidance):
    c2w, mvp = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    assert torch.equal(guidance.camera(mvp, c2w), camera_condition("extrinsics", c2w, mvp))
    with pytest.raises(ValueError, match="c2w"):
        guidance.camera(mvp, None)
    with pytest.raises(ConfigError, match="guidance_eval"):
        guidance(torch.rand(2, 16, 16, 3), make_prompt_output(features=FEATURES), *cams(2), c2w=c2w,
                 guidance_eval=True)


def test_perp_neg_at_batch_4_equals_four_single_sample_steps(tiny_sd):
    guidance = make_guidance(tiny_sd, perp_neg=True)
    prompts = make_prompt_output(features=FEATURES)
    decision = guidance.perp_neg(prompts)
    assert decision.enabled
    latents, t, noise, camera = step_inputs(batch=4, seed=2)
    latents.requires_grad_(True)
    out = guidance.vsd_step(latents, None, t, noise, prompts, cams(4), camera, decision)
    out["loss_vsd"].backward()
    assert float(out["perp_neg/mean_neg_weight"]) > 0 and out["unet_rows"] > 2 * 4 + 2 * 4
    batch_grad = latents.grad * 4  # d loss / d latents = grad / B
    for b in range(4):
        single = latents[b:b + 1].detach().clone().requires_grad_(True)
        view = tuple(c[b:b + 1] for c in cams(4))
        guidance.vsd_step(single, None, t[b:b + 1], noise[b:b + 1], prompts, view, camera[b:b + 1],
                          decision)["loss_vsd"].backward()
        assert torch.allclose(single.grad[0], batch_grad[b], atol=1e-5, rtol=1e-4), b


def test_dsds_clipping_acts_on_the_vsd_gradient(tiny_sd):
    guidance = make_guidance(tiny_sd, score_clipping=True, clip_schedule="constant", clip_start=0.05)
    latents, t, noise, camera = step_inputs(seed=4)
    latents.requires_grad_(True)
    prompts = make_prompt_output(features=FEATURES)
    out = guidance.vsd_step(latents, None, t, noise, prompts, cams(2), camera, guidance.perp_neg(prompts))
    assert out["dsds/clip_threshold"] == 0.05 and float(out["dsds/clipped_fraction"]) > 0
    out["loss_vsd"].backward()
    grad = latents.grad * 2
    assert grad.abs().max() <= 0.05 + 1e-6
    unclipped = make_guidance(tiny_sd).vsd_step(latents.detach(), None, t, noise, prompts, cams(2), camera,
                                                guidance.perp_neg(prompts))
    assert unclipped["grad_norm"] > out["grad_norm"]
    guidance.log_schedules()
    assert any("D-SDS clipping of VSD's gradient w(t)(eps_pre - eps_lora)" in m for m in guidance._logged)


def test_grad_clip_clamps_the_vsd_gradient(tiny_sd):
    guidance = make_guidance(tiny_sd, grad_clip=0.01)
    latents, t, noise, camera = step_inputs(seed=6)
    prompts = make_prompt_output(features=FEATURES)
    out = guidance.vsd_step(latents, None, t, noise, prompts, cams(2), camera, guidance.perp_neg(prompts))
    assert out["grad_norm"] <= 0.01 * (latents.numel()) ** 0.5 + 1e-6


def test_a_different_lora_model_gets_its_own_unet_and_schedule(tiny_sd, tiny_sd_vpred):
    guidance = make_guidance(tiny_sd, lora_model=tiny_sd_vpred)
    assert not guidance.lora.shared and guidance.lora.unet is not guidance.backbone.unet
    assert guidance.lora.prediction_type == "v_prediction"
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    out = guidance(rgb, make_prompt_output(features=FEATURES), *cams(2), c2w=torch.randn(2, 4, 4))
    assert torch.isfinite(out["loss_vsd"]) and torch.isfinite(out["loss_lora"])
    shared = make_guidance(tiny_sd)
    assert shared.lora.shared and shared.lora.unet is shared.backbone.unet


@pytest.mark.parametrize("keys, bad", [
    (dict(use_sjc=True), "use_sjc"),
    (dict(camera_condition_type="intrinsics"), "camera_condition_type"),
    (dict(lora_n_timestamp_samples=0), "lora_n_timestamp_samples"),
    (dict(guidance_scale_lora=float("inf")), "guidance_scale_lora"),
    (dict(weighting_strategy="uniform"), "weighting_strategy"),
    (dict(backbone="deepfloyd-if"), "pretrained_model_name_or_path"),
    (dict(pretrained_model_name_or_path_lora=""), "pretrained_model_name_or_path_lora"),
])
def test_bad_vsd_keys_are_config_errors_before_any_model_loads(keys, bad):
    with pytest.raises(ConfigError) as error:
        resolve_config(VSDConfig(**keys))
    assert error.value.key == bad


def test_the_defaults_are_threestudios():
    config = VSDConfig()
    resolved = resolve_config(config)
    assert resolved.guidance_scale == 7.5 and resolved.backbone == "stable-diffusion"
    assert (config.pretrained_model_name_or_path, config.pretrained_model_name_or_path_lora) == (
        "stabilityai/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-1")
    assert (config.guidance_scale_lora, config.lora_cfg_training, config.lora_n_timestamp_samples,
            config.camera_condition_type) == (1.0, True, 1, "extrinsics")


# -- samples (system.visualize_samples) --------------------------------------------------------------
SAMPLE_STEPS = 5  # threestudio's 25, fewer here for time (the threestudio tier runs 25)


@pytest.fixture
def few_steps(monkeypatch):
    import antijanus.core.vsd_guidance as module  # to patch its step count

    monkeypatch.setattr(module, "VSD_SAMPLE_STEPS", SAMPLE_STEPS)


def reference_sample(guidance, first_rows, rest_rows, scale, seed, use_lora=False, camera=None):
    """threestudio's _sample written out on the tiny model: DPM-Solver++ from the folder's
    scheduler config with steps_offset 1 (StableDiffusionPipeline's correction), SAMPLE_STEPS
    steps, noise from torch.randn with the seed, CFG over 2B rows (for the LoRA
    with class labels [camera; 0]), VAE decode at the latents' size, BHWC."""
    from diffusers import DPMSolverMultistepScheduler  # deferred: slow import

    sampler = DPMSolverMultistepScheduler.from_config(guidance.backbone.scheduler_config, steps_offset=1)
    sampler.set_timesteps(SAMPLE_STEPS)
    unet = guidance.backbone.unet
    batch = first_rows.shape[0]
    latents = torch.randn(batch, 4, unet.config.sample_size, unet.config.sample_size,
                          generator=torch.Generator().manual_seed(seed))
    text = torch.cat([first_rows, rest_rows])
    for t in sampler.timesteps:
        rows, ts = torch.cat([latents, latents]), t.reshape(1).expand(2 * batch)
        if use_lora:
            out = guidance.lora.output(rows, ts, text, camera_cfg_rows(camera))
        else:
            out = guidance.backbone.predict_noise(rows, ts, text)
        latents = sampler.step(cfg_noise(*out.chunk(2), scale), t, latents).prev_sample
    return guidance.backbone.decode(latents).permute(0, 2, 3, 1)


def test_sample_is_threestudios_cfg_sampler_on_the_pretrained_model(guidance, few_steps):
    prompts = make_prompt_output(features=FEATURES, negative_equals_empty=False)
    elevation, azimuth, distances = cams(2)
    images = guidance.sample(prompts, elevation, azimuth, distances, seed=7)
    size = guidance.backbone.image_size
    assert images.shape == (2, size, size, 3) and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0
    direction = torch.tensor([1, 0])  # front, side
    expected = reference_sample(guidance, prompts.text_embeddings_vd[direction],
                                prompts.uncond_text_embeddings_vd[direction], 7.5, seed=7)
    assert torch.allclose(images, expected, atol=1e-5)
    assert torch.equal(images, guidance.sample(prompts, elevation, azimuth, distances, seed=7))
    assert not torch.allclose(images, guidance.sample(prompts, elevation, azimuth, distances, seed=8))


def test_sample_lora_is_the_lora_model_with_the_camera(guidance, few_steps):
    prompts = make_prompt_output(features=FEATURES, negative_equals_empty=False)
    g = torch.Generator().manual_seed(9)
    camera, other = torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
    images = guidance.sample_lora(prompts, camera, seed=0)
    assert images.shape == (2, guidance.backbone.image_size, guidance.backbone.image_size, 3)
    assert images.min() >= 0 and images.max() <= 1
    expected = reference_sample(guidance, prompts.text_embeddings.expand(2, -1, -1),
                                prompts.uncond_text_embeddings.expand(2, -1, -1), 1.0, seed=0,
                                use_lora=True, camera=camera)
    assert torch.allclose(images, expected, atol=1e-5)
    assert torch.equal(images, guidance.sample_lora(prompts, camera, seed=0))
    assert not torch.allclose(images, guidance.sample_lora(prompts, other, seed=0))  # the camera acts
    elevation, azimuth, distances = cams(2)
    pretrained = guidance.sample(prompts, elevation, azimuth, distances, seed=0)
    assert not torch.allclose(images, pretrained)  # the LoRA branch, not the pretrained model


def test_sample_lora_cfg_uses_the_unconditional_prompt_and_the_zero_camera(tiny_sd, few_steps):
    guidance = make_guidance(tiny_sd, guidance_scale_lora=0.5)
    prompts = make_prompt_output(features=FEATURES, negative_equals_empty=False)
    camera = torch.randn(1, 16, generator=torch.Generator().manual_seed(10))
    expected = reference_sample(guidance, prompts.text_embeddings, prompts.uncond_text_embeddings, 0.5,
                                seed=3, use_lora=True, camera=camera)
    assert torch.allclose(guidance.sample_lora(prompts, camera, seed=3), expected, atol=1e-5)


def test_sample_uses_the_guidances_perp_neg_when_it_is_on(tiny_sd, guidance, few_steps):
    prompts = make_prompt_output(features=FEATURES, negative_equals_empty=False)
    side = (torch.tensor([10.0]), torch.tensor([60.0]), torch.tensor([2.0]))
    with_perp_neg = make_guidance(tiny_sd, perp_neg=True)
    assert with_perp_neg.perp_neg(prompts).enabled
    assert not torch.allclose(with_perp_neg.sample(prompts, *side, seed=1), guidance.sample(prompts, *side, seed=1))
