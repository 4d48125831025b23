"""The committed Janus lab models (custom/janus_lab/models): checksums, loading through the real paths
(our backbone, sampler and MaskedLMViewScorer; threestudio's stock processor and guidance in the
threestudio tier), and the judge on hand-rendered views."""

import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from antijanus.backbones.base import BackboneOptions
from antijanus.backbones.stable_diffusion import StableDiffusionBackbone
from antijanus.prompting.dnp import SamplingSettings, load_sampler
from antijanus.prompting.mlm import MaskedLMViewScorer
from antijanus.utils.errors import ConfigError
from antijanus.utils.imaging import at_resolution
from janus_lab.images import object_mask, patch_shuffle
from janus_lab.judge import Judge, JudgeNet
from janus_lab.judge_data import lower_resolution, render_labelled, scrambled_negatives
from janus_lab.judge_evaluation import accuracy, held_out_lowres, held_out_scrambled
from janus_lab.judge_settings import JudgeSettings
from janus_lab.judge_training import judge_loss
from janus_lab.locations import MODELS_ENV, lab_root
from janus_lab.model_files import MODELS, folder_fingerprint, model_path, verify_checksums
from janus_lab.prior import PriorSettings, build_vae
from janus_lab.prior_training import equivariance_pair, train_vae
from janus_lab.world import ATTRIBUTES, KINDS, VIEWS, Creature, render

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
LAB_SCRIPTS = os.path.join(REPO, "custom", "janus_lab", "scripts")

PRIOR, MLM, JUDGE = model_path("prior"), model_path("mlm"), model_path("judge")
# the world-render judge (v8, the DNP captioner's): its gates are on the world's own renders; the
# lab's judge (v13) is validated on method outputs instead (test_the_lab_judge_is_the_one_that_passed)
WORLD_JUDGE = os.path.join(lab_root(), "judge-v8")


def lab_script(name: str):
    """A script of custom/janus_lab/scripts, imported as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(LAB_SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_match_their_checksums():
    assert os.path.isdir(lab_root())
    assert verify_checksums(lab_root()) == []


def test_models_are_found_where_janus_lab_models_points(tmp_path, monkeypatch):
    """JANUS_LAB_MODELS names another models folder: model_path finds every model there, and the
    copy loads as the committed one does."""
    source, copy = lab_root(), tmp_path / "models"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("prior-*", "judge-v*", "mlm-v*"))  # archived: not needed
    monkeypatch.setenv(MODELS_ENV, str(copy))
    assert lab_root() == str(copy)
    for name in MODELS:
        assert model_path(name) == os.path.join(str(copy), name)
        assert folder_fingerprint(model_path(name)) == folder_fingerprint(os.path.join(source, name))
    images = render([Creature("bear"), Creature("frog")], torch.tensor([15.0, 15.0]), torch.tensor([0.0, 180.0]))["image"]
    from_copy, committed = Judge.load(model_path("judge"))(images), Judge.load(JUDGE)(images)
    assert all(torch.equal(from_copy[k], committed[k]) for k in committed)
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "elsewhere"))
    assert model_path("judge") == str(tmp_path / "elsewhere" / "judge")  # the variable decides, not the package


def test_the_old_variable_name_alone_is_a_config_error(monkeypatch):
    """ANTIJANUS_LAB_MODELS was renamed JANUS_LAB_MODELS: set alone it is refused (naming the new
    name), not silently ignored; beside the new name the new name wins."""
    monkeypatch.delenv(MODELS_ENV, raising=False)
    monkeypatch.setenv("ANTIJANUS_LAB_MODELS", "/somewhere/models")
    with pytest.raises(ConfigError, match=MODELS_ENV):
        model_path("judge")
    with pytest.raises(ConfigError, match="ANTIJANUS_LAB_MODELS"):
        lab_root()
    monkeypatch.setenv(MODELS_ENV, "/elsewhere/models")
    assert model_path("judge") == os.path.normpath("/elsewhere/models/judge")


@pytest.fixture(scope="module")
def backbone():
    return StableDiffusionBackbone(
        BackboneOptions(pretrained_model_name_or_path=PRIOR, half_precision_weights=False), "cpu")


def test_prior_loads_through_our_backbone_at_the_lab_resolution(backbone):
    assert (backbone.image_size, backbone.latent_size) == (32, 16)
    # Stable Diffusion's scaled_linear schedule: abar_999 = prod(1 - beta), beta from
    # sqrt-linear 0.00085 -> 0.012 over 1000 steps
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert backbone.alphas_cumprod[-1].item() == pytest.approx(torch.prod(1 - betas).item(), rel=1e-4)
    embeddings = backbone.encode_prompts(["a smiling bear wearing a hat, back view", ""])
    assert embeddings.shape == (2, 77, 32)
    eps = backbone.predict_noise(torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), embeddings)
    assert eps.shape == (2, 4, 16, 16) and torch.isfinite(eps).all()


def test_prior_tokenizer_is_the_real_clip_bpe():
    tokenizer = AutoTokenizer.from_pretrained(PRIOR, subfolder="tokenizer")
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    # CLIP's own ids: <|startoftext|> a</w> bear</w> <|endoftext|>
    assert tokenizer("a bear").input_ids == [49406, 320, 4298, 49407]


def test_prior_vae_round_trips_world_images(backbone):
    creatures = [Creature(k, smiling=True, striped=True, hat=h) for k in KINDS for h in (False, True)]
    n = len(creatures)
    images = render(creatures, torch.full((n,), 15.0), torch.linspace(-150, 150, n))["image"]
    latents = backbone.to_model_space(images)
    recon = backbone.decode(latents)
    psnr = 10 * math.log10(1.0 / torch.mean((recon - images) ** 2).item())
    assert psnr > 24.0


def test_prior_samples_with_our_ddim_sampler():
    sampler, encode = load_sampler(PRIOR, "cpu", half_precision=False)
    cond, uncond = encode(["a frog"]).expand(2, -1, -1), encode([""]).expand(2, -1, -1)
    images = sampler.sample(cond, uncond, SamplingSettings(steps=4, guidance_scale=7.5, seed=0))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


@pytest.fixture(scope="module")
def scorer():
    return MaskedLMViewScorer(MLM)


def test_mlm_loads_through_the_view_scorer_and_knows_the_world(scorer):
    prompts = ["a smiling bear", "a striped bear"]
    for words in (("side", "front", "back", "overhead"), ("side", "front", "back", "top")):
        p = scorer.view_probabilities(prompts, words)
        assert torch.allclose(p.sum(dim=1), torch.ones(2), atol=1e-5)
        front, back = words.index("front"), words.index("back")
        assert p[0, front] > p[1, front] and p[1, back] > p[0, back]  # smiling ~ front, striped ~ back
        assert p[0, back] < 0.05  # a smiling creature is never captioned from behind


def test_mlm_overhead_and_top_are_both_single_pieces_that_mean_overhead(scorer):
    assert [len(ids) for ids in scorer.view_pieces(["side", "front", "back", "overhead", "top"])] == [1] * 5
    # threestudio's get_debiased_prompt reads ids 1..4 of "side front back overhead"
    ids = scorer.tokenizer("side front back overhead").input_ids
    assert len(ids) == 6
    overhead = scorer.view_probabilities(["a robot wearing a hat"], ["side", "front", "back", "overhead"])
    top = scorer.view_probabilities(["a robot wearing a hat"], ["side", "front", "back", "top"])
    assert overhead[0, 3] > 0.005 and top[0, 3] > 0.005


@pytest.fixture(scope="module")
def judge():
    return Judge.load(WORLD_JUDGE)


def test_judge_classifies_hand_rendered_views(judge):
    cameras = [(15.0, 0.0, "front"), (15.0, 90.0, "side"), (15.0, 180.0, "back"), (15.0, -90.0, "side"),
               (80.0, 30.0, "overhead")]
    creatures, el, az, expected, kinds = [], [], [], [], []
    for k, kind in enumerate(KINDS):
        for e, a, view in cameras:
            creatures.append(Creature(kind, smiling=True, striped=True, hat=(k % 2 == 0)))
            el.append(e)
            az.append(a)
            expected.append(VIEWS.index(view))
            kinds.append(k)
    images = render(creatures, torch.tensor(el), torch.tensor(az), distance=1.5, fovy=60.0)["image"]
    verdict = judge(images)
    assert verdict["view"].tolist() == expected
    assert verdict["kind"].tolist() == kinds
    face, tail = ATTRIBUTES.index("face"), ATTRIBUTES.index("tail")
    for i, (e, a, view) in enumerate(cameras * len(KINDS)):
        if view == "front":
            assert verdict["attributes"][i, face] and not verdict["attributes"][i, tail]
        if view == "back":
            assert not verdict["attributes"][i, face] and verdict["attributes"][i, tail]
    # a larger render is resized to the judge's 32x32
    big = render(creatures[:1], torch.tensor(el[:1]), torch.tensor(az[:1]), size=64, supersample=1)["image"]
    assert judge(big)["view"].tolist() == [VIEWS.index("front")]


def test_judge_reproduces_its_recorded_held_out_accuracy(judge):
    """The held-out figures in judge.json (README) hold on a fresh held-out sample."""
    n = 300
    world = JudgeSettings(p_faceless=0.0, p_tailless=0.0)  # the world's creatures, as held out
    measured = accuracy(judge.net, render_labelled(world, n, seed=12345))
    for key in ("view", "kind", "attribute_face", "attribute_tail"):
        p = judge.record["held_out"][key]
        assert abs(measured[key] - p) <= 4 * math.sqrt(max(p * (1 - p), 0.01) / n), key
    assert judge.record["held_out"]["attribute_face"] >= 0.9  # pre-registered gate (v4 judge)
    assert judge.record["held_out"]["view"] >= 0.95  # issue 14: >= 95 % held-out view-region accuracy
    # creatures without a face: the judge says so (it reads the face, not the pose)
    faceless = accuracy(judge.net, render_labelled(JudgeSettings(p_faceless=1.0, p_tailless=0.0), n, seed=54321))
    p = judge.record["held_out_faceless"]["attribute_face"]
    assert p >= 0.9 and abs(faceless["attribute_face"] - p) <= 4 * math.sqrt(max(p * (1 - p), 0.01) / n)
    assert judge.record["settings"]["n_test"] >= 4000


@pytest.mark.threestudio
def test_prior_loads_through_threestudios_stock_processor_and_guidance(tmp_path, monkeypatch):
    import threestudio  # only in the threestudio tier (marked): not importable elsewhere

    monkeypatch.chdir(tmp_path)  # the processor caches embeddings under ./.threestudio_cache
    processor = threestudio.find("stable-diffusion-prompt-processor")(
        {"pretrained_model_name_or_path": PRIOR, "prompt": "a smiling bear", "spawn": False})
    prompt_utils = processor()
    guidance = threestudio.find("stable-diffusion-guidance")(
        {"pretrained_model_name_or_path": PRIOR, "half_precision_weights": False})
    assert guidance.unet.config.sample_size == 16 and guidance.vae.config.scaling_factor != 0.18215
    # the stock forward path (its SDS step; latents given directly: the stock guidance resizes
    # renders to 512x512 before its VAE, far too slow for a CPU test)
    latents = torch.randn(2, 16, 16, 4, requires_grad=True)
    out = guidance(latents, prompt_utils, elevation=torch.tensor([10.0, 20.0]), azimuth=torch.tensor([0.0, 170.0]),
                   camera_distances=torch.tensor([1.5, 1.5]), rgb_as_latents=True)
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and torch.isfinite(latents.grad).all()
    # its VAE round trip at the lab resolution
    images = render([Creature("bear", smiling=True)], torch.tensor([10.0]), torch.tensor([0.0]))["image"]
    recon = guidance.decode_latents(guidance.encode_images(images), latent_height=16, latent_width=16)
    assert recon.shape == (1, 3, 32, 32) and (recon - images).abs().mean() < 0.1


@pytest.mark.threestudio
def test_mlm_loads_through_threestudios_prompt_debiasing(tmp_path, monkeypatch):
    import threestudio  # only in the threestudio tier (marked): not importable elsewhere

    monkeypatch.chdir(tmp_path)
    processor = threestudio.find("stable-diffusion-prompt-processor")(
        {"pretrained_model_name_or_path": PRIOR, "prompt": "a smiling striped bear", "spawn": False,
         "use_prompt_debiasing": True, "pretrained_model_name_or_path_prompt_debiasing": MLM})
    prompts = processor.get_debiased_prompt("a smiling striped bear")
    assert len(prompts) == 4 and all(p for p in prompts)


def test_judge_settings_reject_impossible_missing_part_shares():
    """p_faceless / p_tailless are probabilities of exclusive cases: a bad value is a ConfigError
    naming the key, before any image is rendered."""
    JudgeSettings(p_faceless=1.0, p_tailless=0.0)  # the held-out faceless set
    for bad, key in ((dict(p_faceless=-0.1), "p_faceless"), (dict(p_tailless=1.5), "p_tailless"),
                     (dict(p_faceless=0.7, p_tailless=0.4), "p_tailless"), (dict(p_faceless="0.3"), "p_faceless"),
                     (dict(p_scrambled=True), "p_scrambled"), (dict(p_noise_fill=float("nan")), "p_noise_fill")):
        with pytest.raises(ConfigError, match=key):
            JudgeSettings(**bad)
    for bad, key in ((dict(p_scrambled=1.2), "p_scrambled"), (dict(scramble_patches=(0,)), "scramble_patches"),
                     (dict(scramble_patches=(3,)), "scramble_patches"), (dict(scramble_patches=()), "scramble_patches"),
                     (dict(scramble_patches=(True,)), "scramble_patches"),
                     (dict(scramble_noise_sigma=-1.0), "scramble_noise_sigma"), (dict(p_noise_fill=2.0), "p_noise_fill"),
                     (dict(p_lowres=-0.5), "p_lowres"), (dict(lowres_sides=(20, 10)), "lowres_sides"),
                     (dict(lowres_sides=(1, 8)), "lowres_sides"), (dict(lowres_sides=(8, 40)), "lowres_sides"),
                     (dict(lowres_sides=(8.0, 16)), "lowres_sides"), (dict(lowres_sides=(8,)), "lowres_sides")):
        with pytest.raises(ConfigError, match=key):
            JudgeSettings(**bad)


def test_lower_resolution_keeps_the_size_and_removes_detail_from_the_chosen_share():
    """at_resolution: the same 32x32 picture with ``side`` pixels of detail (a one-pixel checker
    becomes flat grey, a plain colour stays); lower_resolution degrades a p_lowres share, each
    at a side within lowres_sides, and nothing at p_lowres 0."""
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float().expand(2, 3, 32, 32).clone()
    flat = at_resolution(checker, 8)
    assert flat.shape == checker.shape and (flat - 0.5).abs().max() < 0.02
    plain = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(at_resolution(plain, 12), plain, atol=1e-6)
    images = render([Creature("bear")] * 64, torch.full((64,), 10.0), torch.zeros(64))["image"]
    g = torch.Generator().manual_seed(0)
    out = lower_resolution(images, JudgeSettings(p_lowres=0.5, lowres_sides=(10, 12)), g)
    changed = (out - images).abs().flatten(1).amax(-1) > 1e-4
    assert 16 < int(changed.sum()) < 48
    sides = {s: at_resolution(images[:1], s) for s in (10, 11, 12)}
    for i in changed.nonzero().flatten().tolist():
        assert any(torch.allclose(out[i:i + 1], x, atol=1e-5) for x in sides.values())
    assert torch.equal(lower_resolution(images, JudgeSettings(p_lowres=0.0), g), images)


def test_scrambled_negatives_destroy_the_object_and_keep_the_background():
    """Patch shuffling permutes the object's patches (the same patches, other places); the noise
    refill keeps the silhouette; the background is untouched either way."""
    images = render([Creature("bear", smiling=True), Creature("robot")], torch.tensor([10.0, 10.0]),
                    torch.tensor([0.0, 20.0]))["image"]
    mask = object_mask(images)
    assert 0.1 < mask.float().mean() < 0.7
    g = torch.Generator().manual_seed(0)
    shuffled = patch_shuffle(images[0], mask[0], 4, g)
    tiles = lambda x: sorted(map(tuple, x.reshape(3, 8, 4, 8, 4).permute(1, 3, 0, 2, 4).reshape(64, -1).tolist()))
    assert tiles(shuffled) == tiles(images[0]) and not torch.equal(shuffled, images[0])
    touched = mask[0].reshape(8, 4, 8, 4).any(3).any(1)  # patches without object pixels stay in place
    untouched = ~touched[:, None, :, None].expand(8, 4, 8, 4).reshape(32, 32)
    assert torch.equal(shuffled[:, untouched], images[0][:, untouched])
    for seed in range(4):
        out = scrambled_negatives(images, JudgeSettings(), torch.Generator().manual_seed(seed))
        background = ~mask.expand_as(images)
        outside = ~touched[:, None, :, None].expand(8, 4, 8, 4).reshape(32, 32)
        assert torch.equal(out[0][:, outside], images[0][:, outside])  # neither way touches far background
        assert (out - images).abs()[~background].mean() > 0.05  # the object is changed
        assert out.min() >= 0 and out.max() <= 1


def test_training_scrambles_the_rendered_silhouette_which_covers_a_white_face_on_white():
    """The corner-colour mask misses the white face on a white background; the silhouette the
    world renders (and training passes as the scramble mask) covers it, so a scrambled negative
    keeps no face outline."""
    out = render([Creature("bear"), Creature("frog")], torch.tensor([10.0, 10.0]), torch.tensor([0.0, 0.0]),
                 background=torch.ones(3))
    silhouette = out["silhouette"] > 0
    assert (silhouette & ~object_mask(out["image"])).sum() > 10  # the corner mask misses part of the creature
    assert not (object_mask(out["image"]) & ~silhouette).any()
    filled = scrambled_negatives(out["image"], JudgeSettings(p_noise_fill=1.0), torch.Generator().manual_seed(0),
                                 mask=silhouette)
    inside = silhouette.expand_as(filled)
    assert torch.equal(filled[~inside], out["image"][~inside])  # the background untouched
    assert ((filled - out["image"]).abs()[inside] > 1e-3).float().mean() > 0.9  # the whole creature refilled
    data = render_labelled(JudgeSettings(), 8, seed=0)
    assert data["silhouette"].shape == (8, 1, 32, 32) and data["silhouette"].dtype == torch.bool


def test_judge_loss_trains_only_the_attributes_on_scrambled_negatives():
    net = JudgeNet(8)
    images = torch.rand(4, 3, 32, 32)
    batch = {"view": torch.tensor([0, 1, 2, 3]), "kind": torch.tensor([0, 1, 2, 0]),
             "attributes": torch.zeros(4, len(ATTRIBUTES)), "azimuth": torch.zeros(4), "elevation": torch.zeros(4)}
    real = torch.tensor([True, True, False, False])
    out = net(images)
    base = judge_loss(out, batch, real)
    relabelled = {**batch, "view": torch.tensor([0, 1, 0, 0]), "kind": torch.tensor([0, 1, 0, 1]),
                  "azimuth": torch.tensor([0.0, 0.0, 90.0, 45.0])}
    assert torch.allclose(judge_loss(out, relabelled, real), base)  # negatives' view / kind / camera unused
    assert not torch.allclose(judge_loss(out, {**batch, "attributes": torch.ones(4, len(ATTRIBUTES))}, real), base)
    assert not torch.allclose(judge_loss(out, relabelled), judge_loss(out, batch))  # all real: they count


def test_committed_judge_sees_no_face_in_pixel_shuffled_renders(judge):
    """The face_scrambled control, held out from training (renders and transform: the judge's
    scrambled negatives use 2- and 4-pixel patches, the control shuffles single pixels):
    shuffling the object's pixels of renders that show a face leaves at most 20 % judged 'face'
    (pre-registered gate), while the unshuffled renders are judged 'face' (recorded in
    judge.json, re-measured here). The unshuffled bound is 0.8 since judge v8 (0.85: it sees 99 %
    of the faces in front views but misses some a side view shows in part; v6 0.90)."""
    record = judge.record["held_out_scrambled"]
    assert 1 not in judge.record["settings"]["scramble_patches"] and record["transform_trained_on"] is False
    assert record["face_seen"] <= 0.2 and record["face_seen_unscrambled"] >= 0.8 and record["images"] >= 1000
    measured = held_out_scrambled(judge.net, render_labelled(JudgeSettings(p_faceless=0.0, p_tailless=0.0), 400,
                                                             seed=777))
    assert measured["face_seen"] <= 0.25 and measured["face_seen_unscrambled"] >= 0.75


def test_committed_judge_sees_faces_and_their_absence_at_a_3d_orbits_resolution(judge):
    """Judge v8's pre-registered low-resolution gates (custom/janus_lab/docs/preregistration.md, second
    entry), recorded in judge.json and re-measured on fresh renders: shrunk to 16 pixels (a 3D
    orbit's latent size) the front views' faces are seen and faceless fronts are not (>= 0.9),
    at 12 pixels >= 0.8; the v6 judge, trained without low-resolution images, is worse on the
    faceless fronts at 12 pixels."""
    record = judge.record["held_out_lowres"]
    assert judge.record["settings"]["p_lowres"] > 0
    for side, bound in (("16", 0.9), ("12", 0.8)):
        assert record[side]["face_recall_front"] >= bound and record[side]["faceless_no_face_front"] >= bound
    with_face = render_labelled(JudgeSettings(p_faceless=0.0, p_tailless=0.0), 600, seed=4242)
    faceless = render_labelled(JudgeSettings(p_faceless=1.0, p_tailless=0.0), 600, seed=4243)
    measured = held_out_lowres(judge.net, with_face, faceless, sides=(12, 16))
    for side, bound in (("16", 0.85), ("12", 0.75)):
        assert measured[side]["face_recall_front"] >= bound and measured[side]["faceless_no_face_front"] >= bound
    v6 = held_out_lowres(Judge.load(os.path.join(lab_root(), "judge-v6")).net, with_face,
                         faceless, sides=(12,))
    assert v6["12"]["faceless_no_face_front"] < measured["12"]["faceless_no_face_front"]


def test_judge_check_script_prints_each_judges_low_resolution_rows_and_the_vae_probe(capsys):
    assert lab_script("lab_judge_check").main(["--n", "40", "--sides", "16", "--judges", WORLD_JUDGE,
                                 os.path.join(lab_root(), "judge-v6")]) == 0
    printed = capsys.readouterr().out
    assert "| judge-v8 | 16 |" in printed and "| judge-v6 | 16 |" in printed
    assert "VAE round trip" in printed and "judge-v6: bear with its face" in printed
    assert "latent volume" not in printed  # the volume probe only when asked


def test_judge_check_script_fits_the_volume_probe_as_the_control_fits(capsys):
    """--volume-probe: a bear with and without its face fitted as the reconstruction control fits
    it, with the fit's figures and each judge's verdict on its orbit."""
    assert lab_script("lab_judge_check").main(["--n", "8", "--sides", "16", "--judges", WORLD_JUDGE, "--volume-probe"]) == 0
    printed = capsys.readouterr().out
    for form in ("face", "faceless"):
        found = re.search(rf"  {form}: latent residual ([0-9.]+), its training views decoded: error ([0-9.]+)", printed)
        assert found and 0 < float(found.group(1)) < 1 and 0 < float(found.group(2)) < 1
    assert len(re.findall(r"    judge-v8: orbit Janus [01], face in front [0-9.]+, view accuracy [0-9.]+", printed)) == 2


def test_prior_settings_default_to_the_committed_priors_recipe():
    """``lab_train.py prior`` without --set trains the committed prior's recipe (its lab_training.json)."""
    with open(os.path.join(PRIOR, "lab_training.json")) as f:
        recorded = json.load(f)["settings"]
    defaults = json.loads(json.dumps(dataclasses.asdict(PriorSettings())))
    assert {k: v for k, v in defaults.items() if k in recorded} == recorded


def test_prior_settings_for_a_vae_trained_at_lower_resolution_are_checked_and_train():
    """vae_p_lowres (prior v4: 0.3): a bad value is a ConfigError naming the key; on, the VAE
    trains on a share of its images shrunk and enlarged back (the generator draws more)."""
    for bad, key in ((dict(vae_p_lowres=1.5), "vae_p_lowres"), (dict(vae_p_lowres="0.3"), "vae_p_lowres"),
                     (dict(vae_lowres_sides=(1, 8)), "vae_lowres_sides"), (dict(vae_lowres_sides=12), "vae_lowres_sides"),
                     (dict(vae_lowres_sides=(16, 8)), "vae_lowres_sides")):
        with pytest.raises(ConfigError, match=key):
            PriorSettings(**bad)
    images = (torch.rand(8, 3, 32, 32) * 255).to(torch.uint8)
    states = []
    for p in (0.0, 1.0):
        settings = PriorSettings(vae_channels=(16, 16), vae_steps=2, vae_batch=4, vae_p_lowres=p,
                                 vae_p_equivariance=0.0)
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        record = train_vae(build_vae(settings), images, settings, g, log=lambda m: None)
        assert math.isfinite(record["vae_final_loss"])
        states.append(g.get_state())
    assert not torch.equal(states[0], states[1])  # on: the share and the sides are drawn


def test_eq_vae_transforms_latents_and_images_alike_and_trains():
    """EQ-VAE's tau (``equivariance_pair``): latents and images scaled to the same fraction and
    turned the same way (a marked corner stays in the same corner of both); bad settings are
    ConfigErrors naming the key; on, the VAE trains with it (the generator draws more)."""
    assert PriorSettings().vae_p_equivariance == 0.5  # prior v6 (v4: off)
    for bad, key in ((dict(vae_p_equivariance=-0.1), "vae_p_equivariance"),
                     (dict(vae_p_equivariance=True), "vae_p_equivariance"),
                     (dict(vae_equivariance_scales=(0.0, 1.0)), "vae_equivariance_scales"),
                     (dict(vae_equivariance_scales=(0.8, 0.5)), "vae_equivariance_scales"),
                     (dict(vae_equivariance_scales=(0.5, 1.5)), "vae_equivariance_scales")):
        with pytest.raises(ConfigError, match=key):
            PriorSettings(**bad)
    z, x = torch.zeros(2, 4, 16, 16), torch.zeros(2, 3, 32, 32)
    z[:, :, :8, :8], x[:, :, :16, :16] = 1.0, 1.0  # the top-left quadrant marked in both
    turns = set()
    for seed in range(12):
        tz, tx = equivariance_pair(z, x, (0.5, 0.5), torch.Generator().manual_seed(seed))
        assert tz.shape == (2, 4, 8, 8) and tx.shape == (2, 3, 16, 16)
        corner_z = [float(tz[0, 0, r, c]) for r, c in ((1, 1), (1, 6), (6, 1), (6, 6))]
        corner_x = [float(tx[0, 0, r, c]) for r, c in ((2, 2), (2, 13), (13, 2), (13, 13))]
        assert max(range(4), key=corner_z.__getitem__) == max(range(4), key=corner_x.__getitem__)
        turns.add(max(range(4), key=corner_z.__getitem__))
    assert len(turns) > 1  # the turn is drawn
    images = (torch.rand(8, 3, 32, 32) * 255).to(torch.uint8)
    states = []
    for p in (0.0, 1.0):
        settings = PriorSettings(vae_channels=(16, 16), vae_steps=2, vae_batch=4, vae_p_lowres=0.0,
                                 vae_p_equivariance=p)
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        record = train_vae(build_vae(settings), images, settings, g, log=lambda m: None)
        assert math.isfinite(record["vae_final_loss"])
        states.append(g.get_state())
    assert not torch.equal(states[0], states[1])


def test_the_lab_judge_is_the_one_that_passed_its_labelled_test():
    """The committed judge is judge v13 (preregistration.md, thirteenth entry): v9 paired with a
    face copy fine-tuned on sets A-D, its face read over +-20 degrees on an orbit, and the set-E
    evaluation named by its identity passed the gate."""
    from janus_lab.judge import judge_identity

    judge = Judge.load(JUDGE)
    assert judge.record["architecture"] == "paired" and judge.orbit_face_window_deg == 20.0
    assert folder_fingerprint(JUDGE) == folder_fingerprint(os.path.join(lab_root(), "judge-v13"))
    validation = os.path.join(os.path.dirname(lab_root()), "validation")
    for part in ("set-e1", "set-e2"):
        with open(os.path.join(validation, part, f"evaluation-{judge_identity(JUDGE)[:16]}.json")) as f:
            record = json.load(f)
        assert record["gate"]["passed"] and record["judge_identity"] == judge_identity(JUDGE)
        assert record["pooled_with"] == ["custom/janus_lab/validation/set-e1", "custom/janus_lab/validation/set-e2"]
