"""`perp-neg-vsd-guidance` next to threestudio's own VSD guidances on the same tiny Stable
Diffusion folder (SD's geometry: 512x512 images, 64x64 latents, and the 1280-wide time embedding
threestudio's camera embedding is hard-coded for), with the same LoRA weights (ours loads
threestudio's state dict: the names are the same), timesteps, noise and cameras:

- `stable-diffusion-vsd-guidance`, Perp-Neg off: the VSD gradient and the LoRA loss are
  threestudio's; `sample` / `sample_lora` (system.visualize_samples) are its images.
- `stable-diffusion-unified-guidance` with `guidance_type: vsd` (threestudio's only VSD with
  Perp-Neg, processor-side, on the pretrained branch), Perp-Neg on, batch 1: the pretrained
  branch's guided noise, the VSD gradient (up to the weighting, see below) and the LoRA loss are
  threestudio's. At batch 2 threestudio's Perp-Neg pairs negatives with the other sample's latent
  (as its SDS, issue 456); ours equals each sample run alone.

The unified guidance's `weighting_strategy: dreamfusion` is w(t) = 1 - sqrt(abar_t) (its
`self.alphas` holds sqrt(abar_t)), not the 1 - abar_t of `stable-diffusion-vsd-guidance` and ours:
the gradients are compared with its `uniform` weighting (w = 1) divided out of ours, and the
dreamfusion factor is asserted as it is."""

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


def step(guidance, latents, prompt_utils, cams, draws, loss="loss_vsd"):
    """d loss / d latents of one step with the given draws (threestudio's unified guidance:
    ``loss="loss_sd"``)."""
    x = latents.clone().requires_grad_(True)
    with fixed_draws(*draws):
        out = guidance(x, prompt_utils, **cams, rgb_as_latents=True)
    out[loss].backward()
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


def test_samples_equal_threestudios_sample_and_sample_lora(sd512, prompt_utils):
    """system.visualize_samples: sample (pretrained model, CFG, 25 DPM-Solver++ steps from the
    seed's noise) and sample_lora (the LoRA model with the camera) are threestudio's images."""
    import threestudio

    import antijanus.adapters  # noqa: F401  (registers the modules)

    keys = {"pretrained_model_name_or_path": sd512, "pretrained_model_name_or_path_lora": sd512,
            "half_precision_weights": False, "guidance_scale": 7.5, "guidance_scale_lora": 0.5}
    reference = threestudio.find("stable-diffusion-vsd-guidance")(keys)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(6)
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    ours = threestudio.find("perp-neg-vsd-guidance")(keys)
    ours.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(7)
    batch = dict(elevation=torch.tensor([15.0]), azimuth=torch.tensor([100.0]), camera_distances=torch.tensor([2.0]),
                 c2w=torch.randn(1, 4, 4, generator=g), mvp_mtx=torch.randn(1, 4, 4, generator=g),
                 index=torch.tensor([0]))  # prolificdreamer-system passes the whole validation batch
    expected = reference.sample(prompt_utils, **batch, seed=3)
    got = ours.sample(prompt_utils, **batch, seed=3)
    assert got.shape == expected.shape == (1, 512, 512, 3)
    assert (got - expected).abs().max() <= 1e-4
    expected_lora = reference.sample_lora(prompt_utils, **batch)
    got_lora = ours.sample_lora(prompt_utils, **batch)
    assert (got_lora - expected_lora).abs().max() <= 1e-4
    assert (got_lora - got).abs().max() > 1e-2  # two different models


# -- threestudio's unified guidance (guidance_type vsd): Perp-Neg on the pretrained branch ----------
CUSTOM_WEIGHTS = dict(perp_neg_f_sb=[1.0, 0.5, -0.4], perp_neg_f_fsb=[2.0, 0.5, 0.5],
                      perp_neg_f_fs=[3.0, 0.5, -1.5], perp_neg_f_sf=[3.0, 0.5, -1.5])


@pytest.fixture(scope="module")
def perp_neg_prompt_utils(sd512, tmp_path_factory):
    """threestudio's stock processor with use_perp_neg: true and custom weights."""
    import threestudio

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cache-perp-neg"))
    try:
        return threestudio.find("stable-diffusion-prompt-processor")(
            {"pretrained_model_name_or_path": sd512, "prompt": "a corgi", "spawn": False, "use_perp_neg": True,
             **CUSTOM_WEIGHTS})()
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def unified_pair(sd512):
    """threestudio's unified VSD (the LoRA on the pretrained UNet, as ours with the same model
    for both branches) with a LoRA that has learned something, and ours with its weights."""
    import threestudio

    import antijanus.adapters  # noqa: F401  (registers the modules)

    common = {"pretrained_model_name_or_path": sd512, "half_precision_weights": False, "guidance_scale": 7.5}
    reference = threestudio.find("stable-diffusion-unified-guidance")(
        {**common, "guidance_type": "vsd", "weighting_strategy": "uniform", "use_img_loss": False,
         "vsd_guidance_scale_phi": 1.0, "vsd_lora_cfg_training": False, "vsd_camera_condition_type": "extrinsics"})
    reference.do_update_step(0, 0)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(4)
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    ours = threestudio.find("perp-neg-vsd-guidance")(
        {**common, "pretrained_model_name_or_path_lora": sd512, "guidance_scale_lora": 1.0,
         "lora_cfg_training": False, "camera_condition_type": "extrinsics"})
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def unified_cams(*azimuths, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(azimuths)
    return dict(elevation=torch.full((n,), 10.0), azimuth=torch.tensor(azimuths, dtype=torch.float32),
                camera_distances=torch.full((n,), 2.0), c2w=torch.randn(n, 4, 4, generator=g),
                mvp_mtx=torch.randn(n, 4, 4, generator=g))


def pretrained_noise(reference, ours, x_t, t, prompt_utils, cams):
    """The pretrained branch's guided noise of both on the same x_t and t."""
    views = (cams["elevation"], cams["azimuth"], cams["camera_distances"])
    theirs = reference.get_eps_pretrain(x_t, t, prompt_utils, *views)
    engine = ours.engine
    mine = engine.guided_noise(x_t, t, prompt_utils, *views, engine.perp_neg(prompt_utils)).eps_hat
    return theirs, mine


def assert_close(a, b, rtol=1e-4):
    scale = b.abs().max()
    assert scale > 0 and (a - b).abs().max() <= rtol * scale, ((a - b).abs().max(), scale)


@pytest.mark.parametrize("azimuth", [60.0, 130.0, -20.0])
def test_perp_neg_vsd_at_batch_1_equals_threestudios_unified_vsd(unified_pair, perp_neg_prompt_utils, azimuth):
    """Processor-side Perp-Neg (custom weights): the pretrained branch's Perp-Neg noise, the step's
    gradient and loss_lora (unified: loss_train_phi) are threestudio's on the same draws."""
    reference, ours = unified_pair
    assert ours.engine.perp_neg(perp_neg_prompt_utils).enabled
    g = torch.Generator().manual_seed(int(azimuth) % 97)
    latents = torch.randn(1, 64, 64, 4, generator=g)
    cams = unified_cams(azimuth, seed=1)
    t = torch.tensor([400])
    draws = ([t, torch.randint(0, 1000, (1,), generator=g)],
             [torch.randn(1, 4, 64, 64, generator=g), torch.randn(1, 4, 64, 64, generator=g)])
    x_t = torch.randn(1, 4, 64, 64, generator=g)
    theirs_eps, our_eps = pretrained_noise(reference, ours, x_t, t, perp_neg_prompt_utils, cams)
    assert_close(our_eps, theirs_eps)
    plain = reference.get_eps_pretrain(x_t, t, prompt_utils_without_perp_neg(perp_neg_prompt_utils),
                                       cams["elevation"], cams["azimuth"], cams["camera_distances"])
    assert (plain - theirs_eps).abs().max() > 1e-3 * theirs_eps.abs().max()  # Perp-Neg acts

    expected, reference_out = step(reference, latents, perp_neg_prompt_utils, cams, draws, loss="loss_sd")
    got, out = step(ours, latents, perp_neg_prompt_utils, cams, draws)
    w = 1.0 - ours.engine.alphas_cumprod[t]  # ours (and stable-diffusion-vsd-guidance): 1 - abar_t
    assert_close(got / w, expected)  # unified with weighting uniform: w = 1
    assert torch.allclose(out["loss_lora"], reference_out["loss_train_phi"], rtol=1e-4)
    assert float(out["perp_neg/mean_neg_weight"]) > 0


def test_unified_dreamfusion_weighting_is_one_minus_sqrt_abar(unified_pair, perp_neg_prompt_utils):
    """threestudio's unified default weighting differs from its VSD guidance's (and ours) by
    (1 - sqrt(abar_t)) / (1 - abar_t)."""
    reference, ours = unified_pair
    g = torch.Generator().manual_seed(11)
    latents = torch.randn(1, 64, 64, 4, generator=g)
    cams = unified_cams(60.0, seed=2)
    t = torch.tensor([300])
    draws = ([t, torch.tensor([5])], [torch.randn(1, 4, 64, 64, generator=g), torch.randn(1, 4, 64, 64, generator=g)])
    reference.cfg.weighting_strategy = "dreamfusion"
    try:
        dreamfusion, _ = step(reference, latents, perp_neg_prompt_utils, cams, draws, loss="loss_sd")
    finally:
        reference.cfg.weighting_strategy = "uniform"
    got, _ = step(ours, latents, perp_neg_prompt_utils, cams, draws)
    abar = ours.engine.alphas_cumprod[t]
    assert_close(got * (1 - abar.sqrt()) / (1 - abar), dreamfusion)


def test_unified_vsd_perp_neg_at_batch_2_meets_the_other_samples_latent_ours_does_not(
        unified_pair, perp_neg_prompt_utils):
    """threestudio's unified VSD evaluates the negatives at batch 2 on torch.cat([x_t] * 4) rows
    against per-sample-interleaved negative prompts: a negative meets the other sample's latent.
    Its batch-2 noise differs from each sample's alone; ours equals each sample's alone (which
    is threestudio's batch-1 noise)."""
    reference, ours = unified_pair
    g = torch.Generator().manual_seed(12)
    x_t = torch.randn(2, 4, 64, 64, generator=g)
    t = torch.tensor([500, 500])  # the unified guidance draws one t for the whole batch
    cams = unified_cams(60.0, 130.0, seed=3)
    theirs_batch, ours_batch = pretrained_noise(reference, ours, x_t, t, perp_neg_prompt_utils, cams)
    for b in range(2):
        one = {k: v[b:b + 1] for k, v in cams.items()}
        theirs_alone, _ = pretrained_noise(reference, ours, x_t[b:b + 1], t[b:b + 1], perp_neg_prompt_utils, one)
        assert_close(ours_batch[b:b + 1], theirs_alone)
        assert (theirs_batch[b:b + 1] - theirs_alone).abs().max() > 1e-3 * theirs_alone.abs().max(), b


def prompt_utils_without_perp_neg(prompt_utils):
    import dataclasses  # only here

    return dataclasses.replace(prompt_utils, use_perp_neg=False)


