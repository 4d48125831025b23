"""`perp-neg-vsd-guidance` next to threestudio's own `stable-diffusion-vsd-guidance` on the same
tiny Stable Diffusion folder (SD's geometry: 512x512 images, 64x64 latents, and the 1280-wide time
embedding threestudio's camera embedding is hard-coded for), with the same LoRA weights (ours
loads threestudio's state dict: the names are the same), timesteps, noise and cameras: with
Perp-Neg off the VSD gradient and the LoRA loss are threestudio's."""

import contextlib
import os

import pytest
import torch
from fakes import make_sd512  # noqa: E402

pytestmark = pytest.mark.threestudio


@pytest.fixture(scope="module")
def sd512(tmp_path_factory):
    """A tiny SD folder with SD's geometry and a 1280-wide time embedding."""
    return make_sd512(str(tmp_path_factory.mktemp("sd512-vsd")), time_embedding_dim=1280)


@pytest.fixture(scope="module")
def prompt_utils(sd512, tmp_path_factory):
    import threestudio

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cache"))  # the processor caches under ./.threestudio_cache
    try:
        return threestudio.find("stable-diffusion-prompt-processor")(
            {"pretrained_model_name_or_path": sd512, "prompt": "a corgi", "spawn": False})()
    finally:
        os.chdir(cwd)


@contextlib.contextmanager
def fixed_draws(timesteps, noises):
    """torch.randint returns the given timesteps, torch.randn / randn_like the given noises, in order
    (threestudio draws the LoRA's noise with randn_like, ours with randn)."""
    saved = torch.randint, torch.randn_like, torch.randn
    timesteps, noises = list(timesteps), list(noises)
    torch.randint = lambda *args, **kwargs: timesteps.pop(0).clone()
    torch.randn_like = lambda *args, **kwargs: noises.pop(0).clone()
    torch.randn = lambda *args, **kwargs: noises.pop(0).clone()
    try:
        yield
    finally:
        torch.randint, torch.randn_like, torch.randn = saved
    assert not timesteps and not noises


def step(guidance, latents, prompt_utils, cams, draws):
    x = latents.clone().requires_grad_(True)
    with fixed_draws(*draws):
        out = guidance(x, prompt_utils, **cams, rgb_as_latents=True)
    out["loss_vsd"].backward()
    return x.grad, out


@pytest.mark.parametrize("guidance_scale_lora", [1.0, 0.5])
def test_vsd_gradient_and_lora_loss_equal_threestudios(sd512, prompt_utils, guidance_scale_lora):
    import threestudio

    import antijanus.adapters  # noqa: F401  (registers the modules)

    keys = {"pretrained_model_name_or_path": sd512, "pretrained_model_name_or_path_lora": sd512,
            "half_precision_weights": False, "guidance_scale": 7.5, "lora_cfg_training": False,
            "guidance_scale_lora": guidance_scale_lora}
    reference = threestudio.find("stable-diffusion-vsd-guidance")(keys)
    reference.do_update_step(0, 0)
    with torch.no_grad():  # a LoRA that has learned something
        generator = torch.Generator().manual_seed(3)
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    ours = threestudio.find("perp-neg-vsd-guidance")(keys)
    ours.load_state_dict(reference.state_dict())  # threestudio's checkpoint names load

    g = torch.Generator().manual_seed(0)
    batch = 2
    latents = torch.randn(batch, 64, 64, 4, generator=g)
    cams = dict(elevation=torch.tensor([10.0, 20.0]), azimuth=torch.tensor([0.0, 170.0]),
                camera_distances=torch.full((batch,), 2.0), c2w=torch.randn(batch, 4, 4, generator=g),
                mvp_mtx=torch.randn(batch, 4, 4, generator=g))
    draws = ([torch.tensor([100, 700]), torch.randint(0, 1000, (batch,), generator=g)],
             [torch.randn(batch, 4, 64, 64, generator=g), torch.randn(batch, 4, 64, 64, generator=g)])
    expected, reference_out = step(reference, latents, prompt_utils, cams, draws)
    got, out = step(ours, latents, prompt_utils, cams, draws)
    scale = expected.abs().max()
    assert scale > 0 and (got - expected).abs().max() <= 1e-4 * scale
    assert torch.allclose(out["loss_lora"], reference_out["loss_lora"], rtol=1e-4)
    assert torch.allclose(out["grad_norm"], reference_out["grad_norm"], rtol=1e-4)
