"""threestudio's public guidance methods and outputs on both backbones (issue 11 items 1, 3, 6;
issue 12 item 8): encode_images / decode_latents / set_min_max_steps, guidance_eval previews,
HiFA's image-space loss, sequential CPU offload, loading errors, diagnostics as floats."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.backbones import BackboneOptions, DeepFloydIFBackbone, StableDiffusionBackbone
from antijanus.backbones.base import place
from antijanus.utils.errors import ConfigError

from helpers import make_prompt_output

CAMERAS = dict(elevation=torch.tensor([0.0, 15.0, 70.0]), azimuth=torch.tensor([-100.0, 170.0, 20.0]),
               camera_distances=torch.tensor([2.0, 2.0, 1.5]))
EVAL_KEYS = {"bs", "noise_levels", "imgs_noisy", "imgs_1step", "imgs_1orig", "imgs_final", "texts"}


def sd_guidance(folder, **overrides):
    return threestudio.find("perp-neg-sds-guidance")(
        {"pretrained_model_name_or_path": folder, "half_precision_weights": False, **overrides})


def if_guidance(folder, **overrides):
    return threestudio.find("dsds-guidance")(
        {"backbone": "deepfloyd-if", "pretrained_model_name_or_path": folder,
         "half_precision_weights": False, "trainer_max_steps": 100, **overrides})


# -- encode_images / decode_latents / set_min_max_steps ---------------------------------------
def test_stable_diffusion_encode_and_decode_with_threestudios_signatures(tiny_sd):
    guidance = sd_guidance(tiny_sd)
    images = torch.rand(2, 3, 16, 16)
    latents = guidance.encode_images(images)  # tiny VAE: 2x downsampling, 4 channels
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == images.dtype
    decoded = guidance.decode_latents(latents)  # default: the UNet's latent size (8 here, 64 for SD)
    assert decoded.shape == (2, 3, 16, 16) and 0 <= decoded.min() and decoded.max() <= 1
    # latentnerf's call: rendered 4-channel "rgb" at any size, decoded at (128, 128) latents
    rendered = torch.randn(1, 4, 32, 32)
    assert guidance.decode_latents(rendered, latent_height=12, latent_width=10).shape == (1, 3, 24, 20)
    # what the VAE gives for the resized latents, as threestudio's decode_latents computes it
    backbone = guidance.engine.backbone
    with torch.no_grad():
        expected = backbone.vae.decode(F.interpolate(rendered, (12, 10), mode="bilinear",
                                                     align_corners=False) / backbone.scaling_factor).sample
    assert torch.allclose(guidance.decode_latents(rendered, 12, 10), (expected * 0.5 + 0.5).clamp(0, 1), atol=1e-6)


def test_deepfloyd_decode_is_the_clamped_identity_of_pixel_space(tiny_if):
    guidance = if_guidance(tiny_if)
    images = torch.rand(2, 3, 16, 16)
    pixels = guidance.encode_images(images)
    assert torch.allclose(pixels, images * 2 - 1)
    assert torch.allclose(guidance.decode_latents(pixels), images, atol=1e-6)
    assert guidance.decode_latents(torch.full((1, 3, 16, 16), 3.0)).max() == 1.0  # clamped
    assert guidance.decode_latents(pixels, 8, 8).shape == (2, 3, 8, 8)


def test_set_min_max_steps_and_config_attributes_as_imagedreamfusion_uses_them(tiny_sd):
    guidance = sd_guidance(tiny_sd, min_step_percent=[0, 0.5, 0.1, 100], max_step_percent=0.9)
    # imagedreamfusion: guidance.set_min_max_steps(C(guidance.cfg.min_step_percent), C(...max...))
    assert list(guidance.cfg.min_step_percent) == [0, 0.5, 0.1, 100] and guidance.cfg.max_step_percent == 0.9
    guidance.set_min_max_steps(0.1, 0.5)
    assert (guidance.min_step, guidance.max_step) == (100, 500)
    out = guidance(torch.rand(3, 16, 16, 3), make_prompt_output(), **CAMERAS)
    assert (out["min_step"], out["max_step"]) == (100.0, 500.0)
    assert guidance.num_train_timesteps == 1000 and guidance.alphas.shape == (1000,)
    with pytest.raises(ConfigError, match="min_step_percent"):
        guidance.set_min_max_steps(0.5, 1.0)


def test_diagnostics_are_floats_for_lightnings_logger(tiny_sd):
    """Lightning warns (and converts) when a logged value is not floating point."""
    out = sd_guidance(tiny_sd, score_clipping=True, trainer_max_steps=10)(
        torch.rand(3, 16, 16, 3), make_prompt_output(), **CAMERAS)
    for name, value in out.items():
        if isinstance(value, torch.Tensor):
            assert value.numel() == 1 and value.is_floating_point(), name
        else:
            assert isinstance(value, float), (name, type(value))
    assert out["unet_rows"] == 3 + 3 + 2 + 2  # 2 samples with 2 Perp-Neg negatives, overhead none


# -- guidance_eval --------------------------------------------------------------------------
def assert_previews(out, batch, size):
    previews = out["eval"]
    assert set(previews) == EVAL_KEYS and previews["bs"] == batch
    for key in ("imgs_noisy", "imgs_1step", "imgs_1orig", "imgs_final"):
        images = previews[key]
        assert images.shape == (batch, size, size, 3), key
        assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1, key
    assert len(previews["noise_levels"]) == batch and all(0 < n < 1 for n in previews["noise_levels"])
    n, e, a, c = previews["noise_levels"][0], *(CAMERAS[k][0].item() for k in CAMERAS)
    assert previews["texts"][0] == f"n{n:.02f}\ne{e:.01f}\na{a:.01f}\nc{c:.02f}"
    assert len(previews["texts"]) == batch


def test_guidance_eval_previews_on_stable_diffusion(tiny_sd):
    guidance = sd_guidance(tiny_sd, max_items_eval=2, min_step_percent=0.05, max_step_percent=0.1)
    torch.manual_seed(0)
    out = guidance(torch.rand(3, 16, 16, 3), make_prompt_output(), **CAMERAS, guidance_eval=True)
    assert_previews(out, batch=2, size=16)
    # t in [50, 100] -> the first of DDIM's 50 timesteps at or below t
    timesteps = guidance.engine._sampler.timesteps.tolist()
    for n in out["eval"]["noise_levels"]:
        assert round(n * 1000) in timesteps and 30 <= round(n * 1000) <= 100
    assert "eval" not in guidance(torch.rand(3, 16, 16, 3), make_prompt_output(), **CAMERAS)


def test_guidance_eval_previews_on_deepfloyd_if_use_the_learned_variance(tiny_if):
    guidance = if_guidance(tiny_if, perp_neg=True, max_items_eval=-1, max_step_percent=0.08)
    out = guidance(torch.rand(3, 16, 16, 3), make_prompt_output(features=16), **CAMERAS, guidance_eval=True)
    assert_previews(out, batch=3, size=16)
    assert guidance.engine._sampler.config.variance_type == "learned_range"


# -- HiFA image-space loss ------------------------------------------------------------------
def test_image_space_loss_is_hifas_as_threestudio_computes_it(tiny_sd):
    guidance = sd_guidance(tiny_sd, use_img_loss=True, perp_neg=False, weighting_strategy="fantasia3d",
                           grad_clip=0.05)
    engine, backbone = guidance.engine, guidance.engine.backbone
    prompts = make_prompt_output()
    rgb = torch.rand(3, 12, 12, 3, requires_grad=True)
    torch.manual_seed(5)
    out = guidance(rgb, prompts, **CAMERAS)
    out["loss_sds_img"].backward()
    assert rgb.grad.abs().sum() > 0  # the image loss reaches the render

    # own transcription of threestudio's compute_grad_sds + __call__ (use_img_loss branch),
    # replaying the random stream: VAE sample, t, noise
    torch.manual_seed(5)
    image = F.interpolate(rgb.detach().permute(0, 3, 1, 2), (16, 16), mode="bilinear", align_corners=False)
    latents = backbone.encode_images(image)
    t = torch.randint(engine.min_step, engine.max_step + 1, [3])
    noise = torch.randn_like(latents)
    abar = backbone.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    eps_hat = engine.guided_noise(x_t, t, prompts, **CAMERAS).eps_hat
    with torch.no_grad():
        decoded = backbone.vae.decode(((x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()) / backbone.scaling_factor).sample
    image_denoised = (decoded * 0.5 + 0.5).clamp(0, 1)
    w = abar.sqrt() * (1 - abar)
    grad_img = (w * (image - image_denoised) * abar.sqrt() / (1 - abar).sqrt()).clamp(-0.05, 0.05)
    expected = 0.5 * ((grad_img) ** 2).sum() / 3
    assert out["loss_sds_img"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert (grad_img.abs() == 0.05).any()  # grad_clip acts on the image gradient too


def test_vae_decodes_only_when_a_preview_or_the_image_loss_needs_it(tiny_sd):
    """threestudio decodes the one-step estimate through the VAE on every SDS step."""
    for overrides, expected_decodes in (({}, 0), ({"use_img_loss": True}, 1)):
        guidance = sd_guidance(tiny_sd, **overrides)
        vae = guidance.engine.backbone.vae
        calls = []
        decode = vae.decode
        vae.decode = lambda *a, **k: (calls.append(1), decode(*a, **k))[1]
        out = guidance(torch.rand(2, 16, 16, 3), make_prompt_output(), **{k: v[:2] for k, v in CAMERAS.items()})
        assert len(calls) == expected_decodes and ("loss_sds_img" in out) == bool(expected_decodes)


def test_image_loss_refuses_latent_renders(tiny_sd):
    guidance = sd_guidance(tiny_sd, use_img_loss=True)
    with pytest.raises(ConfigError, match="use_img_loss.*rgb_as_latents"):
        guidance(torch.rand(3, 8, 8, 4), make_prompt_output(), **CAMERAS, rgb_as_latents=True)


def test_image_loss_on_deepfloyd_if_uses_pixel_space(tiny_if):
    guidance = if_guidance(tiny_if, use_img_loss=True, score_clipping=False)
    rgb = torch.rand(3, 20, 20, 3, requires_grad=True)
    out = guidance(rgb, make_prompt_output(features=16), **CAMERAS)
    out["loss_sds_img"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


# -- sequential CPU offload -----------------------------------------------------------------
def test_sequential_cpu_offload_is_a_clear_error_without_cuda(tiny_sd):
    with pytest.raises(ConfigError, match="enable_sequential_cpu_offload.*needs a CUDA device"):
        sd_guidance(tiny_sd, enable_sequential_cpu_offload=True)


def test_sequential_cpu_offload_hooks_every_model_as_diffusers_does(monkeypatch):
    calls = []
    fake = types.ModuleType("accelerate")
    fake.cpu_offload = lambda module, execution_device: calls.append((module, execution_device))
    monkeypatch.setitem(sys.modules, "accelerate", fake)
    modules = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    place(modules, BackboneOptions(enable_sequential_cpu_offload=True), torch.device("cuda", 0))
    assert [m for m, _ in calls] == modules and all(d == torch.device("cuda", 0) for _, d in calls)
    place(modules, BackboneOptions(), torch.device("cpu"))  # without it: moved, no hooks
    assert len(calls) == 2


def test_channels_last_defaults_follow_each_stock_guidance(tiny_sd, tiny_if):
    """stable-diffusion-guidance: false; deep-floyd-guidance: true."""
    sd = sd_guidance(tiny_sd).engine.backbone.unet
    deepfloyd = if_guidance(tiny_if).engine.backbone.unet
    weight = lambda unet: unet.conv_in.weight  # noqa: E731
    assert not weight(sd).is_contiguous(memory_format=torch.channels_last) or weight(sd).shape[-1] == 1
    assert weight(deepfloyd).is_contiguous(memory_format=torch.channels_last)
    assert weight(if_guidance(tiny_if, enable_channels_last_format=False).engine.backbone.unet).is_contiguous()


# -- loading errors (issue 12 item 8) ---------------------------------------------------------
def test_a_folder_of_another_kind_is_a_config_error_naming_the_key(tmp_path):
    from antijanus.testing.tiny_models import make_bert

    bert = make_bert(str(tmp_path / "bert"), ["a", "corgi"])
    for backbone, kind in ((StableDiffusionBackbone, "Stable Diffusion"), (DeepFloydIFBackbone, "DeepFloyd IF")):
        with pytest.raises(ConfigError, match=f"pretrained_model_name_or_path.*is not a {kind}.*missing unet") as info:
            backbone(BackboneOptions(pretrained_model_name_or_path=bert), "cpu")
        assert bert in str(info.value)


def test_a_broken_model_folder_is_a_config_error_naming_the_cause(tmp_path, tiny_sd):
    import shutil

    broken = tmp_path / "sd"
    shutil.copytree(tiny_sd, broken)
    for weights in (broken / "vae").glob("diffusion_pytorch_model.*"):
        weights.unlink()  # an incomplete download
    with pytest.raises(ConfigError, match=r"pretrained_model_name_or_path.*Stable Diffusion VAE"):
        StableDiffusionBackbone(BackboneOptions(pretrained_model_name_or_path=str(broken)), "cpu")


def test_no_model_is_stable_diffusion_2_1_base(monkeypatch):
    """pretrained_model_name_or_path: null is SD 2.1-base (threestudio's stable-diffusion-guidance:
    runwayml/stable-diffusion-v1-5; tests/integration/test_threestudio_parity.py shows the difference), and
    IF stage I XL for the IF backbone, as deep-floyd-guidance."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub id is tried, and named in the error
    with pytest.raises(ConfigError, match=r"pretrained_model_name_or_path.*'stabilityai/stable-diffusion-2-1-base'"):
        sd_guidance(None)
    with pytest.raises(ConfigError, match=r"pretrained_model_name_or_path.*'DeepFloyd/IF-I-XL-v1.0'"):
        if_guidance(None)


def test_sizes_follow_the_model(tiny_sd, tmp_path):
    """Renders are resized to the model's image size and latents to its UNet's sample size
    (threestudio: always 512 / 64, equal for SD 1.x / 2.x-base; 768 / 96 for SD 2.x-768)."""
    import json
    import shutil

    folder = tmp_path / "sd-sample-12"
    shutil.copytree(tiny_sd, folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["sample_size"] == 8
    config_path.write_text(json.dumps({**config, "sample_size": 12}))  # a "768" model in small
    for path, latent in ((tiny_sd, 8), (str(folder), 12)):
        guidance = sd_guidance(path, use_img_loss=True)
        backbone = guidance.engine.backbone
        assert (backbone.latent_size, backbone.image_size) == (latent, 2 * latent)  # VAE factor 2
        rgb = torch.rand(3, 40, 40, 3)
        assert backbone.render_to_image(rgb.permute(0, 3, 1, 2)).shape == (3, 3, 2 * latent, 2 * latent)
        assert backbone.to_model_space(rgb.permute(0, 3, 1, 2)).shape == (3, 4, latent, latent)
        shapes = []
        predict = backbone.predict_noise
        backbone.predict_noise = lambda x, t, e: (shapes.append(tuple(x.shape[-2:])), predict(x, t, e))[1]
        guidance(rgb, make_prompt_output(), **CAMERAS)
        assert shapes == [(latent, latent)]


def test_an_unreachable_hub_id_is_a_config_error_saying_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"pretrained_model_name_or_path.*'nobody/no-such-sd'.*model hub.*no network"):
        StableDiffusionBackbone(BackboneOptions(pretrained_model_name_or_path="nobody/no-such-sd"), "cpu")


# -- deep-floyd-guidance configs port by the type name ---------------------------------------
def test_the_backbone_is_detected_from_the_model(tiny_sd, tiny_if, tmp_path):
    import json
    import shutil

    from antijanus.backbones import detect_backbone

    assert detect_backbone(tiny_if) == "deepfloyd-if" and detect_backbone(tiny_sd) == "stable-diffusion"
    assert detect_backbone("DeepFloyd/IF-I-XL-v1.0") == "deepfloyd-if"
    assert detect_backbone("stabilityai/stable-diffusion-2-1-base") == "stable-diffusion"
    assert detect_backbone(None) == "stable-diffusion"
    bare = tmp_path / "if-without-index"
    shutil.copytree(tiny_if, bare)
    (bare / "model_index.json").unlink()  # then the UNet says: 3 -> 6 channels (epsilon + variance)
    assert json.loads((bare / "unet" / "config.json").read_text())["out_channels"] == 6
    assert detect_backbone(str(bare)) == "deepfloyd-if"


def test_a_deep_floyd_guidance_block_ports_by_the_type_name(tiny_if):
    """threestudio's dreamfusion-if.yaml guidance block, unchanged: no `backbone` key."""
    block = {"pretrained_model_name_or_path": tiny_if, "guidance_scale": 20.0, "weighting_strategy": "sds",
             "min_step_percent": 0.02, "max_step_percent": 0.98, "half_precision_weights": False}
    guidance = threestudio.find("perp-neg-sds-guidance")(block)
    assert isinstance(guidance.engine.backbone, DeepFloydIFBackbone)
    rgb = torch.rand(3, 20, 20, 3, requires_grad=True)
    guidance(rgb, make_prompt_output(features=16), **CAMERAS)["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all()
