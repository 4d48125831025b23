"""Our guidance next to threestudio's own `stable-diffusion-guidance` on the same tiny Stable
Diffusion folder, with the same timesteps and noise (issue 11 items 2, 3, 4; issue 12 item 2).

The folder has threestudio's fixed sizes (512x512 images, 64x64 latents: a tiny UNet with
sample size 64 and a tiny 4-level VAE), so threestudio's hard-coded resizing and ours agree.
Both guidances draw t with ``torch.randint`` and the noise with ``torch.randn_like``; the tests
hand both the same draws. Differences that are on purpose are shown too: the CFG form of plain
SDS/SJC (ours ``eps_unc + s * e_pos``, threestudio ``eps_text + s * e_pos``, so ours with s + 1
equals threestudio with s), Perp-Neg at batch > 1 (threestudio pairs negatives with the wrong
sample's latent, its issue 456), sizes from the model (768 / 96 models), the default model,
sqrt annealing over the run's own length, and timestep ranges checked at configuration.
"""

import contextlib
import os

import pytest
import torch
from fakes import make_sd512  # noqa: E402

pytestmark = pytest.mark.threestudio

CUSTOM_WEIGHTS = dict(perp_neg_f_sb=[1.0, 0.5, -0.4], perp_neg_f_fsb=[2.0, 0.5, 0.5],
                      perp_neg_f_fs=[3.0, 0.5, -1.5], perp_neg_f_sf=[3.0, 0.5, -1.5])


@pytest.fixture(scope="module")
def sd512(tmp_path_factory):
    """A tiny SD folder with SD's own geometry: VAE factor 8, UNet sample size 64."""
    return make_sd512(str(tmp_path_factory.mktemp("sd512")))


@pytest.fixture(scope="module")
def sd512_linear(sd512, tmp_path_factory):
    """sd512 with DDPM's linear schedule: SJC's forced scaled-linear schedule then matters."""
    from fakes import with_linear_schedule

    return with_linear_schedule(sd512, str(tmp_path_factory.mktemp("sd512-linear") / "sd"))


@pytest.fixture(scope="module")
def processors(sd512, tmp_path_factory):
    """threestudio's stock prompt processor outputs: plain, and with processor-side Perp-Neg
    with custom weights."""
    import threestudio

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cache"))  # the processor caches under ./.threestudio_cache
    try:
        make = threestudio.find("stable-diffusion-prompt-processor")
        common = {"pretrained_model_name_or_path": sd512, "prompt": "a corgi", "spawn": False}
        plain = make(common)()
        perp_neg = make({**common, "use_perp_neg": True, **CUSTOM_WEIGHTS})()
    finally:
        os.chdir(cwd)
    return {"plain": plain, "perp_neg": perp_neg}


def theirs(sd512, **cfg):
    import threestudio

    guidance = threestudio.find("stable-diffusion-guidance")(
        {"pretrained_model_name_or_path": sd512, "half_precision_weights": False, **cfg})
    guidance.do_update_step(0, 0)  # as a system does before the first step (sets grad_clip_val)
    return guidance


def ours(sd512, name="perp-neg-sds-guidance", **cfg):
    import threestudio

    import antijanus.adapters  # noqa: F401  (registers the modules)

    return threestudio.find(name)({"pretrained_model_name_or_path": sd512, "half_precision_weights": False, **cfg})


@contextlib.contextmanager
def fixed_draws(t, noise):
    """torch.randint / torch.randn_like return the given timesteps / noise (one step)."""
    randint, randn_like = torch.randint, torch.randn_like

    def fake_randint(low, high, size, **kwargs):
        assert list(size) == [t.shape[0]] and low <= t.min() and t.max() < high
        return t.clone()

    def fake_randn_like(x, **kwargs):
        assert x.shape == noise.shape
        return noise.clone()

    torch.randint, torch.randn_like = fake_randint, fake_randn_like
    try:
        yield
    finally:
        torch.randint, torch.randn_like = randint, randn_like


def cameras(*azimuths):
    n = len(azimuths)
    return dict(elevation=torch.full((n,), 10.0), azimuth=torch.tensor(azimuths, dtype=torch.float32),
                camera_distances=torch.full((n,), 2.0))


def gradient(guidance, latents, prompt_utils, cams, t, noise, key="loss_sds", seed=None):
    """d key / d input for one step with the given draws (BHWC input, as the systems pass it)."""
    x = latents.clone().requires_grad_(True)
    if seed is not None:
        torch.manual_seed(seed)  # the VAE's posterior sample
    with fixed_draws(t, noise):
        out = guidance(x, prompt_utils, **cams, rgb_as_latents=x.shape[-1] == 4)
    out[key].backward()
    return x.grad, out


def draws(batch, seed, low=20, high=980):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(low, high, [batch], generator=g),
            torch.randn(batch, 4, 64, 64, generator=g), torch.randn(batch, 64, 64, 4, generator=g))


def assert_close(a, b, rtol=1e-4):
    scale = b.abs().max()
    assert scale > 0 and (a - b).abs().max() <= rtol * scale, ((a - b).abs().max(), scale)


@pytest.mark.parametrize("var_red", [True, False])
def test_sjc_equals_threestudios_sjc(sd512_linear, processors, var_red):
    """use_sjc: true with Perp-Neg and clipping off: threestudio's compute_grad_sjc, float error,
    on a folder whose own schedule is not SD's (both force SD's scaled-linear one for SJC)."""
    sd512 = sd512_linear
    reference = theirs(sd512, use_sjc=True, var_red=var_red, guidance_scale=100.0,
                       min_step_percent=0.01, max_step_percent=0.97)
    guidance = ours(sd512, use_sjc=True, var_red=var_red, guidance_scale=101.0,
                    min_step_percent=0.01, max_step_percent=0.97)
    assert torch.allclose(guidance.alphas, reference.alphas)
    assert not torch.allclose(guidance.engine.backbone.alphas_cumprod, reference.alphas, atol=1e-2)
    prompt_utils = processors["plain"]
    t, noise, latents = draws(2, seed=0)
    cams = cameras(30.0, -150.0)
    expected, _ = gradient(reference, latents, prompt_utils, cams, t, noise)
    got, out = gradient(guidance, latents, prompt_utils, cams, t, noise)
    assert_close(got, expected)
    assert out["unet_rows"] == 4.0  # one batched call for the batch of 2
    # the same guidance_scale gives threestudio's eps_text + s*e_pos vs our eps_unc + s*e_pos
    same_scale, _ = gradient(ours(sd512, use_sjc=True, var_red=var_red, guidance_scale=100.0,
                                  min_step_percent=0.01, max_step_percent=0.97),
                             latents, prompt_utils, cams, t, noise)
    assert (same_scale - expected).abs().max() > 1e-3 * expected.abs().max()


def test_plain_sds_cfg_form_differs_by_one_in_the_scale(sd512, processors):
    reference = theirs(sd512, guidance_scale=7.5)
    t, noise, latents = draws(2, seed=1)
    cams = cameras(0.0, 100.0)
    expected, _ = gradient(reference, latents, processors["plain"], cams, t, noise)
    got, _ = gradient(ours(sd512, guidance_scale=8.5), latents, processors["plain"], cams, t, noise)
    assert_close(got, expected)
    differs, _ = gradient(ours(sd512, guidance_scale=7.5), latents, processors["plain"], cams, t, noise)
    assert (differs - expected).abs().max() > 1e-3 * expected.abs().max()


@pytest.mark.parametrize("azimuth", [60.0, 130.0, -20.0])
def test_processor_side_perp_neg_ports_by_changing_the_type_name(sd512, processors, azimuth):
    """A stock config with use_perp_neg and custom perp_neg_f_* on its processor, guidance keys
    unchanged: our gradient is threestudio's at batch 1."""
    stock_keys = dict(guidance_scale=100.0, weighting_strategy="sds", min_step_percent=0.02,
                      max_step_percent=0.98)
    t, noise, latents = draws(1, seed=2)
    cams = cameras(azimuth)
    expected, _ = gradient(theirs(sd512, **stock_keys), latents, processors["perp_neg"], cams, t, noise)
    got, out = gradient(ours(sd512, **stock_keys), latents, processors["perp_neg"], cams, t, noise)
    assert_close(got, expected)
    assert out["perp_neg/mean_neg_weight"] > 0
    # our own preset (what the guidance used before it read the processor) is a different gradient
    preset, _ = gradient(ours(sd512, perp_neg_preset="threestudio", **stock_keys), latents,
                         processors["perp_neg"], cams, t, noise)
    assert (preset - expected).abs().max() > 1e-3 * expected.abs().max()


def test_perp_neg_at_batch_two_pairs_each_sample_with_its_own_latent_unlike_threestudio(sd512, processors):
    """threestudio's issue 456: at batch > 1 its negatives meet the other sample's latent. Ours
    at batch 2 equals each sample run alone; threestudio's does not."""
    prompt_utils = processors["perp_neg"]
    t, noise, latents = draws(2, seed=3)
    cams = cameras(60.0, 130.0)
    reference, guidance = theirs(sd512), ours(sd512)
    ours_batch, _ = gradient(guidance, latents, prompt_utils, cams, t, noise)
    theirs_batch, _ = gradient(reference, latents, prompt_utils, cams, t, noise)
    for b in range(2):
        one = {k: v[b:b + 1] for k, v in cams.items()}
        alone, _ = gradient(reference, latents[b:b + 1], prompt_utils, one, t[b:b + 1], noise[b:b + 1])
        # the loss is averaged over the batch: a sample's gradient at batch 2 is half its own
        assert_close(ours_batch[b:b + 1] * 2, alone)
        if b == 1:
            assert (theirs_batch[b:b + 1] * 2 - alone).abs().max() > 1e-3 * alone.abs().max()


def test_dsds_default_clip_is_threestudios_grad_clip_recipe(sd512, processors):
    """dsds-guidance's default clipping equals the authors' recipe grad_clip [0, 2.0, 8.0, N]."""
    # the recipe's shape (psi rising 4x over the run), thresholds scaled to the tiny model's scores
    reference = theirs(sd512, guidance_scale=7.5, grad_clip=[0, 0.02, 0.08, 100])
    guidance = ours(sd512, "dsds-guidance", guidance_scale=8.5, clip_start=0.02, clip_end=0.08,
                    clip_end_step=100)
    for module in (reference, guidance):
        module.do_update_step(0, 30)  # psi = 0.038
    t, noise, latents = draws(2, seed=4)
    cams = cameras(10.0, 170.0)
    expected, _ = gradient(reference, latents, processors["plain"], cams, t, noise)
    got, out = gradient(guidance, latents, processors["plain"], cams, t, noise)
    assert_close(got, expected)
    assert out["dsds/clip_threshold"] == pytest.approx(0.038) and 0 < out["dsds/clipped_fraction"] < 1


def test_hifa_image_loss_equals_threestudios(sd512, processors):
    cfg = dict(use_img_loss=True, min_step_percent=0.3, max_step_percent=0.98, grad_clip=0.5)
    t, noise, _ = draws(1, seed=5)
    rgb = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(6))
    cams = cameras(45.0)
    expected, reference_out = gradient(theirs(sd512, guidance_scale=10.0, **cfg), rgb, processors["plain"],
                                       cams, t, noise, key="loss_sds_img", seed=7)
    got, out = gradient(ours(sd512, guidance_scale=11.0, **cfg), rgb, processors["plain"], cams, t, noise,
                        key="loss_sds_img", seed=7)
    assert out["loss_sds_img"].item() == pytest.approx(reference_out["loss_sds_img"].item(), rel=1e-4)
    assert out["loss_sds"].item() == pytest.approx(reference_out["loss_sds"].item(), rel=1e-4)
    assert_close(got, expected)


def test_guidance_eval_previews_feed_threestudios_saver(sd512, processors, tmp_path):
    """The `eval` dict goes through BaseLift3DSystem.guidance_evaluation_save unchanged."""
    from threestudio.systems.base import BaseLift3DSystem
    from threestudio.utils.saving import SaverMixin

    class Saver(SaverMixin):
        true_global_step = 7

    saver = Saver()
    saver.set_save_dir(str(tmp_path))
    guidance = ours(sd512, min_step_percent=0.02, max_step_percent=0.06)
    cams = cameras(60.0, 130.0)
    rgb = torch.rand(2, 32, 32, 3)
    out = guidance(rgb, processors["perp_neg"], **cams, guidance_eval=True)
    BaseLift3DSystem.guidance_evaluation_save(saver, rgb[: out["eval"]["bs"]], out["eval"])
    assert os.path.getsize(tmp_path / "it7-train.png") > 0


# -- the remaining differences on purpose (README, "Porting a threestudio config") -----------
def test_sizes_follow_the_model_where_threestudio_fixes_512(sd512, processors, tmp_path):
    """A 768 / 96 model (SD 2.x-768): ours feeds the UNet 96x96 latents of a 768 render,
    threestudio 64x64 ones of a 512 render; on a 512 / 64 model both feed 64x64."""
    import json
    import shutil

    sd768 = tmp_path / "sd768"
    shutil.copytree(sd512, sd768)
    config_path = sd768 / "unet" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "sample_size": 96}))
    rgb = torch.rand(1, 32, 32, 3)
    for folder, expected in ((sd512, (64, 64)), (str(sd768), (96, 64))):
        sizes = []
        mine, reference = ours(folder), theirs(folder)
        for guidance, unet in ((mine, mine.engine.backbone.unet), (reference, reference.unet)):
            handle = unet.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[-1]))
            try:
                guidance(rgb, processors["plain"], **cameras(30.0))
            finally:
                handle.remove()
        assert tuple(sizes) == expected, folder


def test_default_model_differs_from_threestudios_on_purpose():
    """pretrained_model_name_or_path: null is SD 2.1-base here (every stock config names its
    model; tests/adapters/test_dropin.py shows null loads it); IF's default is deep-floyd-guidance's."""
    import threestudio

    from antijanus.backbones import DeepFloydIFBackbone, StableDiffusionBackbone

    assert threestudio.find("stable-diffusion-guidance").Config().pretrained_model_name_or_path == \
        "runwayml/stable-diffusion-v1-5"
    assert StableDiffusionBackbone.DEFAULT_MODEL == "stabilityai/stable-diffusion-2-1-base"
    assert threestudio.find("deep-floyd-guidance").Config().pretrained_model_name_or_path == \
        DeepFloydIFBackbone.DEFAULT_MODEL


def test_sqrt_anneal_runs_over_the_runs_length_and_trainer_max_steps_reproduces_threestudio(sd512):
    """trainer_max_steps: null anneals over the running trainer's max_steps; set to 25000 (the
    stock default) it anneals exactly as threestudio, whatever the run's length."""
    from fakes import FakeSystem

    reference = theirs(sd512, sqrt_anneal=True)  # trainer_max_steps 25000
    stretched = ours(sd512, sqrt_anneal=True, trainer_max_steps=25000)
    own_length = ours(sd512, sqrt_anneal=True)
    for step in (0, 2500, 10000):
        reference.do_update_step(0, step)
        FakeSystem(stretched, max_steps=10000).on_train_batch_start(step)
        FakeSystem(own_length, max_steps=10000).on_train_batch_start(step)
        assert (stretched.min_step, stretched.max_step) == (reference.min_step, reference.max_step)
    assert own_length.min_step == own_length.max_step == 20  # the end of its own 10000 steps
    assert reference.min_step > 20


def test_timestep_ranges_are_checked_at_configuration_not_mid_training(sd512, processors):
    """max_step_percent 1.0 (t = T indexes past the schedule) and min above max: threestudio fails
    in a training step; ours refuses the config (schedules are checked at every breakpoint,
    tests/core/test_guidance.py)."""
    from antijanus.utils.errors import ConfigError

    latents = torch.randn(1, 64, 64, 4)
    reference = theirs(sd512, max_step_percent=1.0)
    with pytest.raises((IndexError, RuntimeError)):
        with fixed_draws(torch.tensor([1000]), torch.randn(1, 4, 64, 64)):
            reference(latents, processors["plain"], **cameras(0.0), rgb_as_latents=True)
    with pytest.raises(ConfigError, match="max_step_percent.*must stay below 1.0"):
        ours(sd512, max_step_percent=1.0)

    crossing = dict(min_step_percent=0.5, max_step_percent=0.3)  # (stock guidances take numbers only)
    reference = theirs(sd512, **crossing)  # t ~ U[500, 300]
    with pytest.raises(RuntimeError):
        reference(latents, processors["plain"], **cameras(0.0), rgb_as_latents=True)
    with pytest.raises(ConfigError, match="min_step_percent.*exceeds max_step_percent"):
        ours(sd512, **crossing)
