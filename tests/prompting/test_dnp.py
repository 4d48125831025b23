import json
import os

import pytest
import torch

import antijanus.prompting.captioning
import antijanus.prompting.dnp
import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.backbones import BackboneOptions, StableDiffusionBackbone
from antijanus.prompting.captioning import BlipCaptioner
from antijanus.prompting.dnp import SamplingSettings, StableDiffusionSampler, cached_dnp, cfg_noise, dns_noise
from antijanus.utils.errors import ConfigError
from antijanus.testing.tiny_models import make_blip
from helpers import FakeSystem
from helpers import REPO  # noqa: E402


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    return make_blip(str(tmp_path_factory.mktemp("tiny-blip")))


@pytest.fixture(scope="module")
def sampler(tiny_sd):
    backbone = StableDiffusionBackbone(
        BackboneOptions(pretrained_model_name_or_path=tiny_sd, half_precision_weights=False), "cpu")
    return StableDiffusionSampler(backbone)


def test_dns_direction_is_the_negated_prompt_direction():
    g = torch.Generator().manual_seed(0)
    e0, ep = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for s in (1.0, 7.5):
        dns, cfg = dns_noise(e0, ep, s), cfg_noise(e0, ep, s)
        assert torch.allclose(dns - ep, -s * (ep - e0), atol=1e-6)  # from e_p, away from the prompt
        assert torch.allclose(cfg - e0, s * (ep - e0), atol=1e-6)
        # the derivation's form: e_0 - (s - 1)(e_p - e_0)
        assert torch.allclose(dns, e0 - (s - 1) * (ep - e0), atol=1e-5)


def test_sampler_dns_step_matches_the_formula_on_fixed_noise(sampler):
    emb = sampler.backbone.encode_prompts(["a corgi", ""])
    x_t, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(500)
    e_p = sampler.backbone.predict_noise(x_t, t.view(1), emb[:1])
    e_0 = sampler.backbone.predict_noise(x_t, t.view(1), emb[1:])
    dns = sampler.guided_noise(x_t, t, emb[:1], emb[1:], "dns", 7.5)
    assert torch.allclose(dns, e_p + 7.5 * (e_0 - e_p), atol=1e-4)  # batched vs single rows
    cfg = sampler.guided_noise(x_t, t, emb[:1], emb[1:], "cfg", 7.5)
    assert torch.allclose(cfg, e_0 + 7.5 * (e_p - e_0), atol=1e-4)
    assert not torch.allclose(dns, cfg, atol=1e-3)


def test_sampling_is_seeded_and_modes_differ(sampler):
    emb = sampler.backbone.encode_prompts(["a corgi", ""])
    settings = SamplingSettings(steps=3, guidance_scale=7.5, seed=3)
    a = sampler.sample(emb[:1], emb[1:], settings, mode="dns")
    b = sampler.sample(emb[:1], emb[1:], settings, mode="dns")
    c = sampler.sample(emb[:1], emb[1:], settings, mode="cfg")
    assert a.shape == (1, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_blip_captioner_and_cache_skips_the_models(tiny_sd, tiny_blip, tmp_path):
    captions = BlipCaptioner(tiny_blip, max_new_tokens=5).caption(torch.rand(2, 3, 20, 20))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    built = []

    def make_sampler():
        built.append("sd")
        from antijanus.prompting.dnp import load_sampler
        return load_sampler(tiny_sd, "cpu", half_precision=False)

    def make_captioner():
        built.append("blip")
        return BlipCaptioner(tiny_blip, max_new_tokens=5)

    settings = SamplingSettings(steps=2, seed=1)
    first = cached_dnp("a corgi", tiny_sd, settings, tiny_blip, str(tmp_path), make_sampler, make_captioner)
    assert not first.cache_hit and built == ["sd", "blip"] and os.path.exists(first.image_path)
    second = cached_dnp("a corgi", tiny_sd, settings, tiny_blip, str(tmp_path), make_sampler, make_captioner)
    assert second.cache_hit and built == ["sd", "blip"]  # no model loaded the second time
    assert second.negative_prompt == first.negative_prompt
    assert json.load(open(second.record_path))["negative_prompt"] == first.negative_prompt
    other = cached_dnp("a corgi", tiny_sd, SamplingSettings(steps=2, seed=2), tiny_blip, str(tmp_path),
                       make_sampler, make_captioner)
    assert not other.cache_hit and other.image_path != first.image_path  # the seed is in the key
    # so are the caption length limit and the sampling precision (the processor's variant)
    for variant in ({"caption_max_new_tokens": 3, "half_precision": False},
                    {"caption_max_new_tokens": 5, "half_precision": True}):
        again = cached_dnp("a corgi", tiny_sd, settings, tiny_blip, str(tmp_path), make_sampler, make_captioner,
                           variant=variant)
        assert not again.cache_hit and again.record_path != first.record_path
        assert json.load(open(again.record_path))["variant"] == variant


def test_captioning_progress_advances_with_each_caption(tiny_blip, monkeypatch):
    """The bar moves as each image's caption is generated, not at once after all of them."""
    events = []

    class Bar:
        def update(self, n=1):
            events.append(f"bar +{n}")

        def close(self):
            events.append("bar closed")

    monkeypatch.setattr(antijanus.prompting.captioning, "progress_bar", lambda total, *a, **k: Bar())
    captioner = BlipCaptioner(tiny_blip, max_new_tokens=3)
    generate = captioner.model.generate

    def counted_generate(**kwargs):
        events.append(f"generate {len(kwargs['pixel_values'])}")
        return generate(**kwargs)

    monkeypatch.setattr(captioner.model, "generate", counted_generate)
    images = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    captions = captioner.caption(images, progress=True)
    assert events == ["generate 1", "bar +1"] * 3 + ["bar closed"]
    assert captions == [captioner.caption(image[None])[0] for image in images]


@pytest.mark.parametrize(
    "settings, message",
    [(SamplingSettings(steps=0), "dns_steps.*>= 1"),
     (SamplingSettings(guidance_scale=0.0), "dns_guidance_scale.*> 0")],
)
def test_bad_sampling_settings(settings, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        cached_dnp("a corgi", "m", settings, "c", str(tmp_path), None, None)


def test_empty_prompt_and_missing_or_wrong_model_folders(tmp_path, tiny_sd, tiny_blip):
    from antijanus.prompting.dnp import load_sampler

    with pytest.raises(ConfigError, match="prompt.*must not be empty"):
        cached_dnp(" ", "m", SamplingSettings(), "c", str(tmp_path), None, None)
    with pytest.raises(ConfigError, match="captioner.*does not exist"):
        BlipCaptioner("/no/such/blip")
    with pytest.raises(ConfigError, match="captioner.*not a BLIP captioning folder"):
        BlipCaptioner(tiny_sd)  # a Stable Diffusion folder
    with pytest.raises(ConfigError, match="captioner.*'clip_text_model'.*not a BLIP"):
        BlipCaptioner(os.path.join(tiny_sd, "text_encoder"))
    with pytest.raises(ConfigError, match="captioner.*model hub.*no network"):
        BlipCaptioner("no-such-org/no-such-blip")  # HF_HUB_OFFLINE=1 in the tests
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path.*not a Stable Diffusion folder"):
        load_sampler(tiny_blip, "cpu", half_precision=False)
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path.*model hub"):
        load_sampler("no-such-org/no-such-sd", "cpu", half_precision=False)


def test_a_failed_captioning_leaves_no_dns_image_behind(tiny_sd, tmp_path):
    from antijanus.prompting.dnp import load_sampler

    def broken_captioner():
        raise RuntimeError("captioner died")

    with pytest.raises(RuntimeError, match="captioner died"):
        cached_dnp("a corgi", tiny_sd, SamplingSettings(steps=2), "c", str(tmp_path),
                   lambda: load_sampler(tiny_sd, "cpu", half_precision=False), broken_captioner)
    assert os.listdir(tmp_path) == []  # no image without its record


def test_dnp_prompt_processor_output(tiny_sd, tiny_blip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"pretrained_model_name_or_path": tiny_sd, "prompt": "a corgi", "spawn": False,
              "captioner": tiny_blip, "dns_steps": 2, "caption_max_new_tokens": 5,
              "dnp_output_dir": str(tmp_path / "run")}
    processor = threestudio.find("dnp-prompt-processor")(config)
    n_star = processor.dnp.negative_prompt
    assert processor.negative_prompt == n_star
    out = processor()
    # n* is the unconditional (threestudio's use of a negative prompt) for every view ...
    expected = processor.load_from_cache(n_star)
    assert all(torch.equal(e, expected) for e in out.uncond_text_embeddings_vd)
    # ... and the "" embedding is provided for Perp-Neg with negative_prompt_weight > 0
    assert out.empty_text_embeddings.shape == (1, 77, 32)
    assert out.text_embeddings_vd.shape == (4, 77, 32) and len(out.directions) == 4
    assert os.path.exists(tmp_path / "run" / "dns-image.png")
    assert json.load(open(tmp_path / "run" / "dnp.json"))["negative_prompt"] == n_star

    from antijanus.core.guidance import ScoreDistillationGuidance
    from antijanus.core.guidance_config import ScoreDistillationConfig
    guidance = ScoreDistillationGuidance(ScoreDistillationConfig(
        pretrained_model_name_or_path=tiny_sd, half_precision_weights=False, perp_neg=True,
        negative_prompt_weight=1.0), "cpu")
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    cams = dict(elevation=torch.zeros(2), azimuth=torch.tensor([30.0, 150.0]), camera_distances=torch.ones(2))
    result = guidance(rgb, out, **cams)
    result["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all()
    if n_star:  # n* differs from "": one Perp-Neg negative-prompt row per sample
        assert result["unet_rows"] == 2 + 2 + 4 + 2

    # a second run reuses the cached n* without any model
    monkeypatch.setattr(antijanus.prompting.captioning, "BlipCaptioner", None)
    monkeypatch.setattr(antijanus.prompting.dnp, "load_sampler", None)
    again = threestudio.find("dnp-prompt-processor")(config)
    assert again.dnp.cache_hit and again.negative_prompt == n_star


def test_auto_dnp_is_the_default_unlike_threestudio():
    """An intended difference (README key table): threestudio's negative prompt defaults to ""."""
    from threestudio.models.prompt_processors.stable_diffusion_prompt_processor import (
        StableDiffusionPromptProcessor,
    )

    assert StableDiffusionPromptProcessor.Config().negative_prompt == ""
    assert threestudio.find("dnp-prompt-processor").Config().negative_prompt == "auto"


def test_dnp_processor_bad_settings(tiny_sd, tiny_blip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sampled = []
    monkeypatch.setattr(antijanus.prompting.dnp, "load_sampler", lambda *a, **k: sampled.append(1))
    base = {"pretrained_model_name_or_path": tiny_sd, "prompt": "a corgi", "captioner": tiny_blip}
    with pytest.raises(ConfigError, match="dns_steps"):
        threestudio.find("dnp-prompt-processor")({**base, "dns_steps": 0})
    with pytest.raises(ConfigError, match="`system.prompt_processor.caption_max_new_tokens` = 0: must be >= 1"):
        threestudio.find("dnp-prompt-processor")({**base, "caption_max_new_tokens": 0})
    with pytest.raises(ConfigError, match="`caption_max_new_tokens` = 0: must be >= 1"):
        BlipCaptioner(tiny_blip, max_new_tokens=0)  # the same check, for callers of the captioner
    assert sampled == []


def test_auto_dnp_keys_are_reported_when_the_negative_prompt_is_given(tiny_sd, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.chdir(tmp_path)
    sampled = []
    monkeypatch.setattr(antijanus.prompting.dnp, "load_sampler", lambda *a, **k: sampled.append(1))
    config = {"pretrained_model_name_or_path": tiny_sd, "prompt": "a corgi", "spawn": False,
              "negative_prompt": "blurry"}
    with caplog.at_level(logging.WARNING):
        processor = threestudio.find("dnp-prompt-processor")(config)
    assert processor.negative_prompt == "blurry" and processor.dnp is None and sampled == []
    assert "have no effect" not in caplog.text  # all auto-DNP keys at their defaults: nothing to say
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        threestudio.find("dnp-prompt-processor")({**config, "dns_steps": 10, "captioner": "/my/blip",
                                                  "dnp_output_dir": "{trial_dir}/dnp"})
    (record,) = [r for r in caplog.records if "have no effect" in r.getMessage()]
    assert "negative_prompt is given ('blurry', not 'auto')" in record.getMessage()
    assert "['dns_steps', 'captioner', 'dnp_output_dir']" in record.getMessage()
    assert sampled == [] and not os.path.exists(tmp_path / "dnp")


@pytest.mark.parametrize("captioner, message", [
    ("/no/such/blip", "captioner.*does not exist"),
    ("{sd}", "captioner.*not a BLIP captioning folder"),
    ("no-such-org/no-such-blip", "captioner.*model hub"),
])
def test_the_captioner_is_checked_before_any_dns_sampling(tiny_sd, tmp_path, monkeypatch, captioner, message):
    monkeypatch.chdir(tmp_path)
    sampled = []
    monkeypatch.setattr(antijanus.prompting.dnp, "load_sampler", lambda *a, **k: sampled.append(1))
    config = {"pretrained_model_name_or_path": tiny_sd, "prompt": "a corgi", "spawn": False,
              "captioner": captioner.format(sd=tiny_sd), "dns_steps": 2}
    with pytest.raises(ConfigError, match=message):
        threestudio.find("dnp-prompt-processor")(config)
    assert sampled == [] and not os.path.exists(tmp_path / ".threestudio_cache" / "dnp")


def test_dns_sampling_and_captioning_are_logged_with_progress_and_land_in_the_trial(
        tiny_sd, tiny_blip, tmp_path, monkeypatch, caplog, capfd):
    import logging

    monkeypatch.chdir(tmp_path)
    trial = tmp_path / "outputs" / "dnp-nerf-sd" / "a_corgi@20250101-000000"
    config = {"pretrained_model_name_or_path": tiny_sd, "prompt": "a corgi", "spawn": False,
              "captioner": tiny_blip, "dns_steps": 3, "caption_max_new_tokens": 5,
              "dnp_output_dir": "{trial_dir}/dnp"}
    with caplog.at_level(logging.INFO):
        processor = FakeSystem(str(trial)).on_fit_start("dnp-prompt-processor", config)
    log = caplog.text
    assert "DNS sampling of [a corgi]" in log and "3 DDIM steps" in log
    assert f"captioning the DNS image with {tiny_blip}" in log
    assert log.index("DNS sampling") < log.index("captioning") < log.index("auto-DNP negative prompt")
    bars = capfd.readouterr().err
    assert "DNS sampling" in bars and "3/3" in bars and "captioning" in bars
    record = json.load(open(trial / "dnp" / "dnp.json"))
    assert record["negative_prompt"] == processor.negative_prompt
    assert os.path.exists(trial / "dnp" / "dns-image.png")
    for name in ("dnp-nerf-sd", "dnp-perp-neg-nerf-sd", "dnp-perp-neg-negative-nerf-sd"):
        from omegaconf import OmegaConf

        shipped = OmegaConf.load(os.path.join(REPO, "configs", f"{name}.yaml"))
        assert shipped.system.prompt_processor.dnp_output_dir == "{trial_dir}/dnp"


def test_dnp_configs_say_what_they_compute():
    """The DNP paper's form CFG(p, n*) is `dnp-nerf-sd`; the Perp-Neg combinations are named."""
    from omegaconf import OmegaConf

    def guidance(name):
        cfg = OmegaConf.load(os.path.join(REPO, "configs", f"{name}.yaml"))
        assert cfg.system.prompt_processor_type == "dnp-prompt-processor"
        assert cfg.system.prompt_processor.negative_prompt == "auto"
        # Perp-Neg: the guidance's perp_neg when set, else the processor's use_perp_neg (README)
        perp_neg = cfg.system.guidance.get("perp_neg")
        if perp_neg is None:
            perp_neg = cfg.system.prompt_processor.get("use_perp_neg", False)
        return perp_neg, cfg.system.guidance

    perp_neg, paper = guidance("dnp-nerf-sd")
    assert perp_neg is False and paper.negative_prompt_weight == 0  # n* the unconditional of CFG
    perp_neg, both = guidance("dnp-perp-neg-nerf-sd")
    assert perp_neg is True and both.negative_prompt_weight == 0  # CFG(p, n*) + Perp-Neg views
    perp_neg, replaced = guidance("dnp-perp-neg-negative-nerf-sd")
    assert perp_neg is True and replaced.negative_prompt_weight > 0  # n* a Perp-Neg negative


def test_2d_script_writes_the_grid_and_record(tiny_sd, tiny_blip, tmp_path):
    import subprocess
    import sys

    script = os.path.join(REPO, "scripts", "dnp_2d.py")
    out = tmp_path / "dnp"
    result = subprocess.run([sys.executable, script, "a corgi", "--model", tiny_sd, "--captioner", tiny_blip,
                             "--steps", "2", "--device", "cpu", "--out", str(out)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.load(open(out / "dnp.json"))
    assert record["captioned"] and record["prompt"] == "a corgi"
    from PIL import Image
    assert Image.open(out / "dnp-grid.png").size == (3 * 256, 256 + 40)
    bad = subprocess.run([sys.executable, script, "a corgi", "--model", tiny_sd, "--steps", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps" in bad.stderr


def test_dnp_processor_keeps_view_phrases_of_long_prompts(tiny_sd, tmp_path, monkeypatch):
    """threestudio's own view prompts ("<prompt>, side view") through the DNP processor."""
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)
    long_prompt = "a corgi " + " ".join(["wearing a very tall hat"] * 5)
    processor = threestudio.find("dnp-prompt-processor")({
        "pretrained_model_name_or_path": tiny_sd, "prompt": long_prompt, "spawn": False,
        "negative_prompt": "blurry"})
    tokenizer = AutoTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    assert len(tokenizer(long_prompt + ", side view").input_ids) > 77
    for text, view in zip(processor.prompts_vd, ("side", "front", "back", "overhead")):
        assert text.endswith(f", {view} view") and len(tokenizer(text).input_ids) <= 77
    views = processor().text_embeddings_vd
    assert not torch.equal(views[0], views[1])
