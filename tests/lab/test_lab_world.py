"""The Janus lab's world and data: renderer ground truth, caption rules, data statistics."""

import dataclasses
import math

import pytest
import torch

from janus_lab import data as labdata
from janus_lab.data import WorldBias, caption_for, make_samples, statistics
from janus_lab.world import (ATTRIBUTES, KINDS, VIEWS, Creature, camera_position, camera_rays, render,
                                 view_region)


FULL = [Creature(kind, smiling=True, striped=True, hat=True) for kind in KINDS]


def visible(result, i, attribute):
    return bool(result["visible"][i, ATTRIBUTES.index(attribute)])


def test_camera_follows_threestudio_convention():
    # threestudio data/uncond.py: d * (cos e cos a, cos e sin a, sin e), z up
    pos = camera_position(torch.tensor([0.0, 0.0, 30.0]), torch.tensor([0.0, 90.0, 180.0]), torch.tensor([1.5, 2.0, 1.0]))
    expected = torch.tensor([[1.5, 0.0, 0.0], [0.0, 2.0, 0.0],
                             [-math.cos(math.radians(30)), 0.0, math.sin(math.radians(30))]])
    assert torch.allclose(pos, expected, atol=1e-6)
    origin, rays = camera_rays(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1.5]), torch.tensor([60.0]), 4)
    centre = rays[0, 1:3, 1:3].mean(dim=(0, 1))
    assert torch.allclose(centre / centre.norm(), torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)  # looks at the origin
    assert rays[0, 0, 1:3, 2].mean() > rays[0, 3, 1:3, 2].mean()  # first image row is up (+z)


def test_view_regions_use_threestudio_default_thresholds():
    # own transcription of the prompt processor: overhead el > 60; front |az| < 45; back |az| > 135
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 60.0, 60.5, 80.0, 10.0])
    az = torch.tensor([0.0, 44.9, 45.0, -90.0, 135.0, 135.1, 0.0, 0.0, 180.0, 200.0])
    names = [VIEWS[int(i)] for i in view_region(el, az)]
    assert names == ["front", "front", "side", "side", "side", "back", "front", "overhead", "overhead", "back"]


def test_front_camera_sees_the_face_back_camera_does_not():
    n = len(FULL)
    front = render(FULL, 10.0 * torch.ones(n), torch.zeros(n))
    back = render(FULL, 10.0 * torch.ones(n), 180.0 * torch.ones(n))
    side = render(FULL, 10.0 * torch.ones(n), 90.0 * torch.ones(n))
    top = render(FULL, 85.0 * torch.ones(n), torch.zeros(n))
    for i in range(n):
        assert visible(front, i, "face") and visible(front, i, "smiling") and not visible(front, i, "striped")
        assert not visible(back, i, "face") and not visible(back, i, "smiling") and visible(back, i, "striped")
        for result in (front, back, side, top):
            assert visible(result, i, "hat")  # seen from everywhere
        assert not visible(side, i, "smiling")
        # the tail marks the back: seen from behind and from the side, hidden from the front
        assert visible(back, i, "tail") and visible(side, i, "tail") and not visible(front, i, "tail")
    assert [VIEWS[int(v)] for v in front["view"]] == ["front"] * n
    assert [VIEWS[int(v)] for v in back["view"]] == ["back"] * n
    assert [VIEWS[int(v)] for v in top["view"]] == ["overhead"] * n
    assert front["image"].shape == (n, 3, 32, 32) and 0.0 <= front["image"].min() and front["image"].max() <= 1.0


def test_absent_attributes_are_never_visible_and_kinds_differ():
    plain = [Creature(kind) for kind in KINDS]
    result = render(plain, torch.full((3,), 10.0), torch.zeros(3))
    for i in range(3):
        assert visible(result, i, "face") and plain[i].has("face") and plain[i].has("tail")  # intrinsic
        assert not any(visible(result, i, a) for a in ("smiling", "striped", "hat"))
    images = result["image"]
    assert (images[0] - images[1]).abs().mean() > 0.05 and (images[1] - images[2]).abs().mean() > 0.05


def test_the_judges_faceless_and_tailless_creatures_lack_exactly_that_part():
    """Creature(face=False) / (tail=False), used only in the judge's training images: the part is
    never visible and never 'had', everything else renders as before."""
    az = torch.tensor([0.0, 90.0, 180.0, -90.0])
    el = torch.full((4,), 10.0)
    for kind in KINDS:
        full = render([Creature(kind, smiling=True)] * 4, el, az)
        for part in ("face", "tail"):
            lacking = Creature(kind, smiling=True, **{part: False})
            result = render([lacking] * 4, el, az)
            j = ATTRIBUTES.index(part)
            assert not lacking.has(part) and not result["visible"][:, j].any()
            assert full["visible"][:, j].any()  # the full creature shows it from some side
            others = [k for k in range(len(ATTRIBUTES)) if k != j]
            assert torch.equal(result["visible"][:, others], full["visible"][:, others])
            assert (result["image"] - full["image"]).abs().sum() > 0


def test_the_face_turns_with_the_azimuth():
    """Camera at azimuth +90 sees the creature's +y flank; the face (at +x) is then at the image's
    left or right edge, mirrored for -90."""
    c = [Creature("bear")] * 2
    result = render(c, torch.tensor([0.0, 0.0]), torch.tensor([60.0, -60.0]), supersample=1)
    white = (result["image"].min(dim=1).values > 0.9) & (result["image"].max(dim=1).values < 0.99)
    cols = torch.arange(32.0)
    centre = [(white[i].float().sum(0) * cols).sum() / white[i].float().sum() for i in range(2)]
    assert (centre[0] - 15.5) * (centre[1] - 15.5) < 0


def test_caption_rules():
    assert caption_for("bear", ["smiling", "striped", "hat"]) == "a smiling striped bear wearing a hat"
    assert caption_for("frog", []) == "a frog"
    samples, _ = make_samples(WorldBias(seed=3), n=250)
    for s in samples:
        words = s.caption.split()
        for attribute in ("smiling", "striped", "hat"):
            if attribute in words:
                assert attribute in s.visible and s.creature.has(attribute)  # nothing invisible is named
        if s.view == "back":
            assert "smiling" not in words
        assert s.creature.kind in words
        if s.view_phrase:
            assert s.view_phrase in labdata.VIEW_PHRASES[s.view] and s.text.endswith(", " + s.view_phrase)
    assert statistics(samples)["invisible_named"] == 0.0


def test_data_is_deterministic_from_the_seed():
    a, images_a = make_samples(WorldBias(seed=5), n=64)
    b, images_b = make_samples(WorldBias(seed=5), n=64)
    c, _ = make_samples(WorldBias(seed=6), n=64)
    assert [s.text for s in a] == [s.text for s in b] and torch.equal(images_a, images_b)
    assert [s.azimuth for s in a] != [s.azimuth for s in c]


def binomial_ok(p_hat, p, n, z=4.0):
    return abs(p_hat - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-9


def test_statistics_follow_the_parameters():
    n = 500
    bias = WorldBias(seed=1, p_view_phrase=0.3, p_front_mode=1.0, front_sigma=10.0, p_overhead=0.0,
                     p_mention=1.0)
    stats = statistics(make_samples(bias, n=n)[0])
    assert binomial_ok(stats["p_view_phrase"], 0.3, n)
    assert stats["view_share"]["front"] > 0.99  # |az| < 45 is 4.5 sigma
    assert stats["view_share"]["overhead"] == 0.0
    # every visible mouth is named when p_mention = 1
    assert stats["p_word_given_view"]["smiling"]["front"] == pytest.approx(stats["p_visible_given_view"]["smiling"]["front"])

    uniform = statistics(make_samples(dataclasses.replace(bias, p_front_mode=0.0, p_view_phrase=0.0,
                                                          p_mention=0.5), n=n)[0])
    assert binomial_ok(uniform["view_share"]["front"], 0.25, n)
    assert binomial_ok(uniform["view_share"]["back"], 0.25, n)
    assert uniform["p_view_phrase"] == 0.0
    assert uniform["p_word_given_view"]["smiling"]["back"] == 0.0
    assert uniform["p_word_given_view"]["striped"]["front"] == 0.0
    # p_mention halves the named share of what is visible
    named, shown = uniform["p_word_given_view"]["hat"]["side"], uniform["p_visible_given_view"]["hat"]["side"]
    assert binomial_ok(named / shown, 0.5, int(n * 0.5 * uniform["view_share"]["side"]))

    kinds = statistics(make_samples(WorldBias(seed=2, kind_weights=(1.0, 0.0, 3.0)), n=400)[0])["kind_share"]
    assert kinds["robot"] == 0.0 and binomial_ok(kinds["frog"], 0.75, 400)


def test_default_bias_is_front_heavy_with_rare_view_phrases():
    stats = statistics(make_samples(WorldBias(), n=500)[0])
    assert stats["view_share"]["front"] > 0.6 > 0.25
    assert binomial_ok(stats["p_view_phrase"], WorldBias().p_view_phrase, 500)
    assert stats["p_word_given_view"]["smiling"]["front"] > 0.3
