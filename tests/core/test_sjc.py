"""Score Jacobian Chaining on the one guidance path (issue 11 item 2): SJC's score with and
without variance reduction, batched and correct for batch > 1, combined with Perp-Neg and D-SDS
clipping (which clips SJC's score, no w(t)). Equality with threestudio's own SJC is checked in
tests/integration/test_threestudio_parity.py."""

import pytest
import torch
from diffusers import DDPMScheduler

from antijanus.backbones import BackboneOptions, DeepFloydIFBackbone, StableDiffusionBackbone
from antijanus.core.guidance import ScoreDistillationGuidance
from antijanus.core.guidance_config import DSDSConfig, ScoreDistillationConfig
from antijanus.core.sds import predicted_x0
from antijanus.core.sjc import sjc_alphas_cumprod, sjc_score, sjc_sigma
from antijanus.utils.errors import ConfigError

from helpers import make_prompt_output
from fakes import CAMERAS, FakeBackbone, with_linear_schedule


@pytest.fixture(scope="module")
def linear_sd(tiny_sd, tmp_path_factory):
    return with_linear_schedule(tiny_sd, str(tmp_path_factory.mktemp("linear") / "sd"))


def guidance_with(config_type=ScoreDistillationConfig, **overrides):
    return ScoreDistillationGuidance(config_type(use_sjc=True, **overrides), "cpu", backbone=FakeBackbone())


def replay_step(guidance, latents, prompts, seed):
    """Replay the random stream of one step (t, then noise) and return t, noise, eps_hat."""
    torch.manual_seed(seed)
    x = latents.detach().permute(0, 3, 1, 2)
    t = torch.randint(guidance.min_step, guidance.max_step + 1, [x.shape[0]])
    noise = torch.randn_like(x)
    abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
    eps_hat = guidance.guided_noise(x_t, t, prompts, **CAMERAS).eps_hat
    return t, noise, eps_hat, x, abar


def test_sjc_score_is_threestudios_denoiser_form():
    """-(D - y)/sigma and -(D - z)/sigma with z = y + sigma eps, D = z - sigma eps_hat."""
    abar = torch.tensor([0.9, 0.3]).view(-1, 1)
    y, eps, eps_hat = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    sigma = sjc_sigma(abar)
    z = y + sigma * eps
    denoised = z - sigma * eps_hat
    assert torch.allclose(sjc_score(eps_hat, eps, var_red=True), -(denoised - y) / sigma, atol=1e-5)
    assert torch.allclose(sjc_score(eps_hat, eps, var_red=False), -(denoised - z) / sigma, atol=1e-5)
    # SJC's scaled input z / sqrt(1 + sigma^2) is the DDPM forward process
    assert torch.allclose(z / (1 + sigma ** 2).sqrt(), abar.sqrt() * y + (1 - abar).sqrt() * eps, atol=1e-6)


def test_sjc_schedule_is_stable_diffusions_scaled_linear():
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear").alphas_cumprod
    assert torch.allclose(sjc_alphas_cumprod(1000), reference)


@pytest.mark.parametrize("var_red", [True, False])
def test_sjc_gradient_has_no_sds_weight(var_red):
    guidance = guidance_with(var_red=var_red, guidance_scale=3.0)
    prompts = make_prompt_output()
    latents = torch.randn(4, 8, 8, 4, requires_grad=True)
    torch.manual_seed(1)
    out = guidance(latents, prompts, **CAMERAS, rgb_as_latents=True)
    out["loss_sds"].backward()
    _, noise, eps_hat, _, _ = replay_step(guidance, latents, prompts, seed=1)
    expected = eps_hat - noise if var_red else eps_hat
    assert torch.allclose(latents.grad.permute(0, 3, 1, 2) * 4, expected, atol=1e-5)


def test_sjc_with_perp_neg_is_batched_and_pairs_each_sample_with_its_own_latent():
    guidance = guidance_with(perp_neg=True)
    prompts = make_prompt_output()
    latents = torch.randn(4, 8, 8, 4)
    torch.manual_seed(2)
    out = guidance(latents, prompts, **CAMERAS, rgb_as_latents=True)
    assert out["unet_rows"] == 13  # one batched call, Perp-Neg rows included
    t, noise, eps_hat, x, abar = replay_step(guidance, latents, prompts, seed=2)
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
    for b in range(4):
        single = guidance.guided_noise(x_t[b:b + 1], t[b:b + 1], prompts,
                                       **{k: v[b:b + 1] for k, v in CAMERAS.items()}).eps_hat
        assert torch.allclose(single[0], eps_hat[b], atol=1e-5)


def test_dsds_on_sjc_clips_the_score_itself():
    """dsds-guidance + use_sjc: the score eps_hat - eps is clipped at psi (no w(t) anywhere)."""
    guidance = guidance_with(DSDSConfig, perp_neg=True, trainer_max_steps=100)
    guidance.update_step(0, 50)  # psi = 5.0
    prompts = make_prompt_output(scale=0.05)
    latents = torch.randn(4, 8, 8, 4, requires_grad=True)
    torch.manual_seed(3)
    out = guidance(latents, prompts, **CAMERAS, rgb_as_latents=True)
    out["loss_sds"].backward()
    _, noise, eps_hat, _, _ = replay_step(guidance, latents, prompts, seed=3)
    assert torch.allclose(latents.grad.permute(0, 3, 1, 2) * 4, (eps_hat - noise).clamp(-5, 5), atol=1e-5)
    assert out["dsds/clip_threshold"] == 5.0 and 0 < out["dsds/clipped_fraction"] < 1


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"weighting_strategy": "uniform"}, "weighting_strategy"),
        ({"use_img_loss": True}, "use_img_loss"),
        ({"score_clipping": True, "clip_target": "residual"}, "clip_target"),
    ],
)
def test_keys_without_effect_on_sjc_are_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=f"{key}.*use_sjc|{key}.*SJC"):
        guidance_with(**overrides)


def test_sjc_forces_stable_diffusions_schedule_whatever_the_folder_says(linear_sd):
    """threestudio loads SJC's scheduler with beta 0.00085 -> 0.012 scaled-linear over the
    folder's: on a folder with another schedule SJC noises with SD's, SDS with the folder's."""
    backbone = StableDiffusionBackbone(BackboneOptions(pretrained_model_name_or_path=linear_sd,
                                                       half_precision_weights=False), "cpu")
    assert not torch.allclose(backbone.alphas_cumprod, sjc_alphas_cumprod(1000), atol=1e-2)
    guidance = ScoreDistillationGuidance(ScoreDistillationConfig(use_sjc=True, perp_neg=True), "cpu", backbone)
    assert torch.allclose(guidance.alphas_cumprod, sjc_alphas_cumprod(1000))
    sds = ScoreDistillationGuidance(ScoreDistillationConfig(perp_neg=True), "cpu", backbone)
    assert torch.equal(sds.alphas_cumprod, backbone.alphas_cumprod)
    latents = torch.randn(2, 8, 8, 4, requires_grad=True)
    out = guidance(latents, make_prompt_output(), **{k: v[:2] for k, v in CAMERAS.items()}, rgb_as_latents=True)
    out["loss_sds"].backward()
    assert torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0


def test_sjc_previews_denoise_on_sjcs_schedule(linear_sd):
    """The SJC preview sampler (make_sampler(sjc=True)) runs on the schedule SJC noised with:
    its one-step x0 estimate is (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) with SJC's abar_t."""
    backbone = StableDiffusionBackbone(BackboneOptions(pretrained_model_name_or_path=linear_sd,
                                                       half_precision_weights=False), "cpu")
    sampler = backbone.make_sampler(sjc=True)
    assert torch.allclose(sampler.alphas_cumprod, sjc_alphas_cumprod(1000))
    assert torch.allclose(backbone.make_sampler().alphas_cumprod, backbone.alphas_cumprod.cpu())  # SDS: the folder's
    guidance = ScoreDistillationGuidance(ScoreDistillationConfig(use_sjc=True, perp_neg=False), "cpu", backbone)
    prompts = make_prompt_output()
    cams = {k: v[:2] for k, v in CAMERAS.items()}
    decision = guidance.perp_neg(prompts)
    torch.manual_seed(0)
    x_t, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([500, 500])  # a DDPM step
    previews = guidance.previews(x_t, t, eps, prompts, *cams.values(), decision)
    assert previews["noise_levels"] == pytest.approx([0.5, 0.5])
    expected = backbone.decode_latents(predicted_x0(x_t, eps, guidance.alphas_cumprod[t])).permute(0, 2, 3, 1)
    assert torch.allclose(previews["imgs_1orig"], expected, atol=1e-5)
    assert torch.isfinite(previews["imgs_final"]).all() and previews["imgs_final"].shape == (2, 16, 16, 3)
    # through the guidance call, as a system with guidance_eval asks for them
    out = guidance(torch.rand(2, 16, 16, 3), prompts, **cams, guidance_eval=True)
    assert out["eval"]["bs"] == 2 and torch.isfinite(out["eval"]["imgs_final"]).all()


def test_sjc_on_deepfloyd_if_uses_ifs_own_schedule(tiny_if):
    backbone = DeepFloydIFBackbone(BackboneOptions(pretrained_model_name_or_path=tiny_if,
                                                   half_precision_weights=False), "cpu")
    guidance = ScoreDistillationGuidance(DSDSConfig(use_sjc=True, trainer_max_steps=10), "cpu", backbone)
    assert torch.equal(guidance.alphas_cumprod, backbone.alphas_cumprod)  # squaredcos, not SD's
    rgb = torch.rand(2, 20, 20, 3, requires_grad=True)
    out = guidance(rgb, make_prompt_output(features=16), **{k: v[:2] for k, v in CAMERAS.items()})
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and out["dsds/clip_threshold"] == 0.5
