"""The backbones on the tiny random folders: the shared UNet call (one call for every row, in the
model's dtype outside autocast), what each model's output becomes (SD: epsilon, v-prediction
converted; IF: epsilon and learned variance), the noise schedule of each path and the preview
samplers."""

import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from antijanus.backbones import (BackboneOptions, DeepFloydIFBackbone, DiffusionBackbone,
                                 StableDiffusionBackbone)
from antijanus.backbones.schedules import SJC_SCHEDULE, sjc_alphas_cumprod
from antijanus.utils.errors import ConfigError

from fakes import with_linear_schedule


def load(kind, folder):
    return kind(BackboneOptions(pretrained_model_name_or_path=folder, half_precision_weights=False), "cpu")


@pytest.fixture(scope="module")
def sd(tiny_sd):
    return load(StableDiffusionBackbone, tiny_sd)


@pytest.fixture(scope="module")
def sd_vpred(tiny_sd_vpred):
    return load(StableDiffusionBackbone, tiny_sd_vpred)


@pytest.fixture(scope="module")
def deepfloyd(tiny_if):
    return load(DeepFloydIFBackbone, tiny_if)


def rows(channels, size, features):
    """x_t [3, C, s, s], t [3], text embeddings [3, 77, F]."""
    torch.manual_seed(0)
    return torch.randn(3, channels, size, size), torch.tensor([10, 500, 990]), torch.randn(3, 77, features)


def raw_unet(backbone, x_t, t, emb):
    with torch.no_grad():
        return backbone.unet(x_t, t, encoder_hidden_states=emb).sample


def test_both_backbones_implement_the_interface(sd, deepfloyd):
    assert isinstance(sd, DiffusionBackbone) and isinstance(deepfloyd, DiffusionBackbone)


def test_stable_diffusion_epsilon_is_the_unets_output_without_variance(sd):
    x_t, t, emb = rows(4, 8, 32)
    eps, variance = sd.predict_noise_and_variance(x_t, t, emb)
    assert variance is None and eps.dtype == torch.float32
    assert torch.allclose(eps, raw_unet(sd, x_t, t, emb), atol=1e-6)
    assert torch.equal(sd.predict_noise(x_t, t, emb), eps)


def test_deepfloyd_splits_epsilon_and_learned_variance(deepfloyd):
    x_t, t, emb = rows(3, 16, 16)
    raw = raw_unet(deepfloyd, x_t, t, emb)
    eps, variance = deepfloyd.predict_noise_and_variance(x_t, t, emb)
    assert raw.shape[1] == 6 and eps.shape == variance.shape == x_t.shape
    assert torch.allclose(eps, raw[:, :3], atol=1e-6) and torch.allclose(variance, raw[:, 3:], atol=1e-6)


@pytest.mark.parametrize("backbone, channels, size, features",
                         [("sd", 4, 8, 32), ("deepfloyd", 3, 16, 16)])
def test_the_unet_runs_in_the_models_dtype_inside_a_mixed_precision_step(backbone, channels, size, features,
                                                                         request):
    """Inside Lightning's 16-mixed autocast the UNet still runs in its own dtype (fp32 here)."""
    backbone = request.getfixturevalue(backbone)
    x_t, t, emb = rows(channels, size, features)
    outside = backbone.unet_output(x_t, t, emb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = backbone.unet_output(x_t, t, emb)
        autocast = backbone.unet(x_t, t, encoder_hidden_states=emb).sample
    assert inside.dtype == torch.float32 and torch.equal(inside, outside)
    assert not torch.allclose(autocast.float(), outside, atol=1e-4)  # what autocast would have done


def test_v_prediction_is_converted_to_epsilon_by_the_formula(sd_vpred):
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 with x_t = sqrt(abar) x0 + sqrt(1 - abar) eps gives
    back eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
    assert sd_vpred.prediction_type == "v_prediction"
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    abar = sd_vpred.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    converted, variance = sd_vpred.noise_from_output(v, x_t, t)
    assert variance is None and torch.allclose(converted, eps, atol=1e-5)


def test_a_prediction_type_other_than_epsilon_or_v_is_a_config_error_naming_the_key(tiny_sd_vpred, tmp_path):
    folder = tmp_path / "sd-sample"
    shutil.copytree(tiny_sd_vpred, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "sample"}))
    with pytest.raises(ConfigError, match=r"`pretrained_model_name_or_path` = .*sd-sample'.*prediction_type "
                                          r"'sample' is not supported; allowed values: 'epsilon', "
                                          r"'v_prediction'"):
        load(StableDiffusionBackbone, str(folder))


def test_sjc_schedule_is_the_scaled_linear_formula():
    T = 1000
    b0, b1 = SJC_SCHEDULE["beta_start"], SJC_SCHEDULE["beta_end"]
    t = torch.arange(T, dtype=torch.float64)
    betas = (b0 ** 0.5 + t / (T - 1) * (b1 ** 0.5 - b0 ** 0.5)) ** 2
    abar = sjc_alphas_cumprod(T)
    assert abar.dtype == torch.float32 and abar.shape == (T,)
    assert torch.allclose(abar.double(), torch.cumprod(1 - betas, 0), rtol=1e-5)
    assert abar[0].item() == pytest.approx(1 - b0) and bool((abar[1:] < abar[:-1]).all())


def test_each_path_noises_on_its_schedule(tiny_sd_vpred, tmp_path, deepfloyd):
    """SD: the folder's schedule for SDS, SJC's for SJC (threestudio forces it); IF: its own for both."""
    sd = load(StableDiffusionBackbone, with_linear_schedule(tiny_sd_vpred, str(tmp_path / "linear")))
    assert torch.equal(sd.noise_schedule(), sd.alphas_cumprod)
    assert torch.allclose(sd.noise_schedule(sjc=True), sjc_alphas_cumprod(1000))
    assert not torch.allclose(sd.noise_schedule(), sd.noise_schedule(sjc=True), atol=1e-2)
    assert torch.equal(deepfloyd.noise_schedule(sjc=True), deepfloyd.alphas_cumprod)


def test_preview_samplers_take_epsilon_on_the_paths_schedule(sd_vpred, deepfloyd):
    sds = sd_vpred.make_sampler()
    assert isinstance(sds, DDIMScheduler) and sds.config.prediction_type == "epsilon"  # v converted
    sjc = sd_vpred.make_sampler(sjc=True)
    assert isinstance(sjc, DDPMScheduler) and sjc.config.prediction_type == "epsilon"
    assert torch.allclose(sjc.alphas_cumprod, sjc_alphas_cumprod(1000))
    deepfloyd_sampler = deepfloyd.make_sampler()
    assert isinstance(deepfloyd_sampler, DDPMScheduler)
    assert deepfloyd_sampler.config.variance_type == "learned_range"  # uses IF's variance channels
