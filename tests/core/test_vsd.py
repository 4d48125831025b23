"""VSD / ESD maths (core/vsd.py) against hand computations and threestudio's conventions: the
gradient w(t)(eps_pre - eps_lora), w(t) = 1 - abar_t, grad_clip, the loss whose gradient is
grad / B, the LoRA branch's camera CFG (ESD below 1), the LoRA training batch (epsilon and
v-prediction targets against diffusers' own scheduler, the tiled layout, camera dropout), and one
whole step on a tiny UNet with threestudio's camera embedding size."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from antijanus.backbones.lora import add_lora, camera_embedding, lora_branch, time_embedding_dim
from antijanus.core.sds import add_noise, sds_weight
from antijanus.core.vsd import (
    CAMERA_DROP_PROBABILITY,
    camera_cfg_rows,
    camera_condition,
    cfg_noise,
    clamp_gradient,
    drop_camera,
    epsilon_from_output,
    esd_lora_scale,
    lora_guided_noise,
    lora_loss,
    lora_training_batch,
    velocity,
    vsd_gradient,
    vsd_image_gradient,
    vsd_loss,
    vsd_weight,
)
from antijanus.testing.tiny_models import _sd_unet_kwargs
from antijanus.utils.errors import ConfigError

ABAR = torch.tensor([0.9, 0.25])  # one abar_t per sample


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the gradient ----------------------------------------------------------------------------------
def test_vsd_gradient_is_w_times_the_difference_of_the_two_predictions_by_hand():
    eps_pre = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 4.0]]]])  # [2, 1, 1, 2]
    eps_lora = torch.tensor([[[[3.0, -1.0]]], [[[0.5, 0.0]]]])
    grad = vsd_gradient(eps_pre, eps_lora, ABAR)
    # sample 0: w = 0.1, diff = (-2, -1); sample 1: w = 0.75, diff = (0, 4)
    expected = torch.tensor([[[[-0.2, -0.1]]], [[[0.0, 3.0]]]])
    assert torch.allclose(grad, expected, atol=1e-6)


def test_vsd_gradient_per_sample_on_random_tensors():
    eps_pre, eps_lora = randn(2, 4, 8, 8, seed=1), randn(2, 4, 8, 8, seed=2)
    grad = vsd_gradient(eps_pre, eps_lora, ABAR)
    for b, abar in enumerate(ABAR.tolist()):
        assert torch.allclose(grad[b], (1 - abar) * (eps_pre[b] - eps_lora[b]), atol=1e-6)


def test_the_weight_is_one_minus_abar_like_sds_default_and_grows_with_t():
    assert torch.allclose(vsd_weight(ABAR), torch.tensor([0.1, 0.75]))
    assert torch.equal(vsd_weight(ABAR), sds_weight(ABAR, "sds"))
    abar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    w = vsd_weight(abar)
    assert w[0] < 0.001 and w[-1] > 0.99 and bool((w[1:] > w[:-1]).all())


def test_grad_clip_replaces_nan_then_clamps_each_element():
    grad = torch.tensor([-5.0, -0.3, 0.0, 0.7, 9.0, float("nan"), float("inf")])
    clipped = clamp_gradient(grad, 0.5)
    assert torch.equal(clipped, torch.tensor([-0.5, -0.3, 0.0, 0.5, 0.5, 0.0, 0.5]))
    unclipped = clamp_gradient(grad, None)  # no grad_clip: only nan_to_num
    assert torch.equal(unclipped[:5], grad[:5]) and unclipped[5] == 0
    assert unclipped[6] == torch.finfo(torch.float32).max


def test_vsd_loss_gives_grad_over_batch_and_its_value():
    latents = randn(3, 4, 8, 8, seed=3).requires_grad_(True)
    grad = randn(3, 4, 8, 8, seed=4)
    loss = vsd_loss(latents, grad)
    loss.backward()
    assert torch.allclose(latents.grad, grad / 3, atol=1e-6)
    assert math.isclose(loss.item(), 0.5 * grad.pow(2).sum().item() / 3, rel_tol=1e-5)


def test_the_image_term_puts_the_lora_image_first():
    image_lora, image_pre = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    grad = vsd_image_gradient(image_lora, image_pre, ABAR)
    for b, abar in enumerate(ABAR.tolist()):
        expected = (1 - abar) * (image_lora[b] - image_pre[b]) * math.sqrt(abar) / math.sqrt(1 - abar)
        assert torch.allclose(grad[b], expected, atol=1e-5)


# -- the two guided predictions ----------------------------------------------------------------------
def test_cfg_is_uncond_plus_scale_times_direction():
    cond, uncond = randn(2, 4, 3, 3, seed=5), randn(2, 4, 3, 3, seed=6)
    assert torch.allclose(cfg_noise(cond, uncond, 7.5), uncond + 7.5 * (cond - uncond))
    assert torch.allclose(cfg_noise(cond, uncond, 1.0), cond)


def test_v_output_converts_to_the_true_noise():
    x0, noise = randn(2, 4, 8, 8, seed=7), randn(2, 4, 8, 8, seed=8)
    x_t = add_noise(x0, noise, ABAR)
    v = velocity(x0, noise, ABAR)
    assert torch.allclose(epsilon_from_output(v, x_t, ABAR, "v_prediction"), noise, atol=1e-5)
    assert epsilon_from_output(v, x_t, ABAR, "epsilon") is v
    with pytest.raises(ConfigError, match="prediction_type"):
        epsilon_from_output(v, x_t, ABAR, "sample")


class RecordingUNet:
    """A LoRA UNet stand-in: output = x_t * (1 + mean(camera)) + mean(text); records its inputs."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t, text, camera):
        self.calls.append((x_t, t, text, camera))
        return x_t * (1 + camera.mean(1).view(-1, 1, 1, 1)) + text.mean((1, 2)).view(-1, 1, 1, 1)


def lora_inputs():
    x_t, t = randn(2, 4, 8, 8, seed=9), torch.tensor([10, 900])
    text, camera = randn(2, 5, 6, seed=10), randn(2, 16, seed=11)
    return x_t, t, text, camera


def test_the_lora_branch_is_one_call_with_camera_and_zero_camera_rows_and_the_same_prompt():
    unet = RecordingUNet()
    x_t, t, text, camera = lora_inputs()
    eps = lora_guided_noise(unet, x_t, t, text, camera, 1.0, ABAR, "epsilon")
    assert len(unet.calls) == 1
    rows_x, rows_t, rows_text, rows_camera = unet.calls[0]
    assert torch.equal(rows_x, torch.cat([x_t, x_t])) and torch.equal(rows_t, torch.cat([t, t]))
    assert torch.equal(rows_text, torch.cat([text, text]))  # never the empty prompt
    assert torch.equal(rows_camera, torch.cat([camera, torch.zeros_like(camera)]))
    assert torch.allclose(eps, unet(x_t, t, text, camera))  # scale 1: the camera-conditioned one


def test_the_lora_cfg_scale_and_v_conversion():
    unet = RecordingUNet()
    x_t, t, text, camera = lora_inputs()
    eps_cam = epsilon_from_output(unet(x_t, t, text, camera), x_t, ABAR, "v_prediction")
    eps_zero = epsilon_from_output(unet(x_t, t, text, torch.zeros_like(camera)), x_t, ABAR, "v_prediction")
    eps = lora_guided_noise(unet, x_t, t, text, camera, 3.0, ABAR, "v_prediction")
    assert torch.allclose(eps, eps_zero + 3.0 * (eps_cam - eps_zero), atol=1e-5)


def test_esd_mixes_the_camera_free_and_camera_scores_with_lambda():
    unet = RecordingUNet()
    x_t, t, text, camera = lora_inputs()
    eps_cam = unet(x_t, t, text, camera)
    eps_zero = unet(x_t, t, text, torch.zeros_like(camera))
    for lam in (0.0, 0.5, 1.0):
        eps = lora_guided_noise(unet, x_t, t, text, camera, esd_lora_scale(lam), ABAR, "epsilon")
        assert torch.allclose(eps, lam * eps_zero + (1 - lam) * eps_cam, atol=1e-5)
    assert esd_lora_scale(0.0) == 1.0  # lambda = 0 is VSD


def test_no_gradient_flows_into_the_lora_in_the_vsd_step():
    weight = torch.ones((), requires_grad=True)
    x_t, t, text, camera = lora_inputs()
    eps = lora_guided_noise(lambda x, *_: x * weight, x_t, t, text, camera, 1.0, ABAR, "epsilon")
    assert not eps.requires_grad


# -- the camera -------------------------------------------------------------------------------------
def test_camera_condition_flattens_the_chosen_matrix_row_major():
    c2w, mvp = torch.arange(32.0).view(2, 4, 4), -torch.arange(32.0).view(2, 4, 4)
    assert torch.equal(camera_condition("extrinsics", c2w, mvp), torch.arange(32.0).view(2, 16))
    assert torch.equal(camera_condition("mvp", c2w, mvp), -torch.arange(32.0).view(2, 16))
    assert torch.equal(camera_cfg_rows(torch.ones(2, 16))[2:], torch.zeros(2, 16))
    with pytest.raises(ConfigError, match="camera_condition_type"):
        camera_condition("intrinsics", c2w, mvp)


def test_camera_dropout_zeroes_the_whole_batch_about_one_call_in_ten():
    generator = torch.Generator().manual_seed(0)
    camera = randn(3, 16, seed=12)
    dropped = 0
    calls = 4000
    for _ in range(calls):
        out = drop_camera(camera, CAMERA_DROP_PROBABILITY, generator)
        if torch.equal(out, torch.zeros_like(camera)):
            dropped += 1
        else:
            assert torch.equal(out, camera)  # all samples or none
    # binomial(4000, 0.1): sd = 19; the fixed generator makes this exact run reproducible
    assert abs(dropped - 0.1 * calls) < 4 * math.sqrt(calls * 0.1 * 0.9)
    again = torch.Generator().manual_seed(0)
    assert sum(torch.equal(drop_camera(camera, 0.1, again), torch.zeros_like(camera))
               for _ in range(calls)) == dropped
    assert all(torch.equal(drop_camera(camera, 0.0, generator), camera) for _ in range(50))


def test_lora_batch_never_drops_without_cfg_training():
    generator = torch.Generator().manual_seed(1)
    latents, text, camera = randn(2, 4, 8, 8), randn(2, 5, 6), randn(2, 16, seed=1) + 5
    abar = torch.linspace(0.999, 0.01, 1000)
    for _ in range(100):
        batch = lora_training_batch(latents, text, camera, abar, "epsilon", cfg_training=False,
                                    generator=generator)
        assert torch.equal(batch.camera, camera)


# -- the LoRA training batch --------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sd_vpred"])
def test_lora_batch_matches_diffusers_noising_and_target(fixture, request):
    scheduler = DDPMScheduler.from_pretrained(request.getfixturevalue(fixture), subfolder="scheduler")
    kind = scheduler.config.prediction_type
    latents, text, camera = randn(2, 4, 8, 8, seed=13), randn(2, 5, 6, seed=14), randn(2, 16, seed=15)
    batch = lora_training_batch(latents, text, camera, scheduler.alphas_cumprod, kind, n_timestamp_samples=3,
                                cfg_training=False, generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)  # threestudio's draws, in its order
    x0 = latents.repeat(3, 1, 1, 1)
    t = torch.randint(0, 1000, (6,), generator=replay)
    noise = torch.randn(x0.shape, generator=replay)
    assert torch.equal(batch.t, t)
    assert torch.allclose(batch.x_t, scheduler.add_noise(x0, noise, t), atol=1e-6)
    expected = noise if kind == "epsilon" else scheduler.get_velocity(x0, noise, t)
    assert torch.allclose(batch.target, expected, atol=1e-6)
    assert kind == ("epsilon" if fixture == "tiny_sd" else "v_prediction")


def test_lora_batch_tiles_the_renders_and_covers_the_whole_schedule():
    latents, text = randn(2, 4, 8, 8, seed=16), randn(2, 5, 6, seed=17)
    camera = torch.stack([torch.full((16,), 1.0), torch.full((16,), 2.0)])
    batch = lora_training_batch(latents, text, camera, torch.linspace(0.999, 0.01, 50), "epsilon",
                                n_timestamp_samples=400, cfg_training=False,
                                generator=torch.Generator().manual_seed(2))
    assert batch.x_t.shape == (800, 4, 8, 8) and batch.text.shape == (800, 5, 6)
    assert torch.equal(batch.text[2:4], text)
    assert torch.equal(batch.camera[:, 0], torch.tensor([1.0, 2.0] * 400))
    assert int(batch.t.min()) == 0 and int(batch.t.max()) == 49  # U{0, ..., T-1}, as threestudio


def test_lora_batch_detaches_the_renders():
    latents = randn(2, 4, 8, 8).requires_grad_(True)
    batch = lora_training_batch(latents, randn(2, 5, 6), randn(2, 16), torch.linspace(0.99, 0.1, 10),
                                "epsilon")
    assert not batch.x_t.requires_grad and not batch.target.requires_grad


def test_lora_loss_is_the_mean_squared_error_in_fp32():
    batch = lora_training_batch(randn(2, 4, 8, 8), randn(2, 5, 6), randn(2, 16),
                                torch.linspace(0.99, 0.1, 10), "epsilon")
    assert lora_loss(lambda x, t, text, cam: batch.target.half(), batch).dtype == torch.float32
    assert lora_loss(lambda x, t, text, cam: batch.target, batch).item() == 0.0
    loss = lora_loss(lambda x, t, text, cam: x, batch)
    assert math.isclose(loss.item(), (batch.x_t - batch.target).pow(2).mean().item(), rel_tol=1e-6)


# -- one whole step on a tiny UNet with threestudio's camera embedding --------------------------------
def test_one_vsd_step_on_a_tiny_unet_with_a_1280_camera_embedding():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_sd_unet_kwargs("tiny"), time_embedding_dim=1280).requires_grad_(False)
    assert time_embedding_dim(unet) == 1280  # threestudio's hard-coded TimestepEmbedding(16, 1280)
    lora, camera_module = add_lora(unet), camera_embedding()
    abar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod

    def lora_unet(x, t, text, camera):
        with lora_branch(unet, lora, camera_module):
            return unet(x, t, encoder_hidden_states=text, class_labels=camera).sample

    latents = randn(2, 4, 8, 8, seed=18).requires_grad_(True)
    text, uncond = randn(2, 8, 32, seed=19), randn(2, 8, 32, seed=20)
    camera = camera_condition("extrinsics", torch.eye(4).repeat(2, 1, 1), torch.eye(4).repeat(2, 1, 1))
    t = torch.tensor([100, 800])
    x_t = add_noise(latents.detach(), randn(2, 4, 8, 8, seed=21), abar[t])
    with torch.no_grad():
        eps_text, eps_unc = unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                 encoder_hidden_states=torch.cat([text, uncond])).sample.chunk(2)
    eps_pre = cfg_noise(eps_text, eps_unc, 7.5)
    eps_lora = lora_guided_noise(lora_unet, x_t, t, text, camera, 1.0, abar[t], "epsilon")
    grad = clamp_gradient(vsd_gradient(eps_pre, eps_lora, abar[t]), None)
    vsd_loss(latents, grad).backward()
    assert torch.allclose(latents.grad, grad / 2, atol=1e-6)

    loss = lora_loss(lora_unet, lora_training_batch(latents, text, camera, abar, "epsilon"))
    loss.backward()
    assert all(p.grad is None for p in unet.parameters())  # the base UNet is frozen
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in camera_module.parameters())
    ups = [p for name, p in lora.named_parameters() if name.endswith("up.weight")]
    assert all(p.grad is not None for p in ups) and any(p.grad.abs().sum() > 0 for p in ups)
