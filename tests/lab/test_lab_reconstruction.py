"""The reconstruction control (janus_lab.reconstruction): known creatures through the fast
path's own representation, and the pre-registered rule that decides whether a judge passes it."""

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

from janus_lab import fast3d
from janus_lab.experiment3d.lab_models import LabModels
from janus_lab.experiment3d.settings import FastSettings
from janus_lab.reconstruction import (FORMS, ReconstructionSettings, fit_volume, passes, world_views)
from antijanus.utils.errors import ConfigError


LATENT = fast3d.VolumeSettings(resolution=8, features="latent", samples=16)


def rows_of(face, faceless, two_faced):
    """Rows for the three kinds: (face_in_front, janus) per kind and form."""
    rows = []
    for form, cells in (("face", face), ("faceless", faceless), ("two_faced", two_faced)):
        for kind, (fif, janus) in zip(("bear", "robot", "frog"), cells):
            rows.append({"kind": kind, "form": form, "face_in_front": fif, "janus": janus})
    return rows


def test_the_rule_needs_faces_seen_no_faces_invented_and_two_faces_caught():
    good = rows_of([(1.0, 0), (0.9, 1), (0.8, 0)], [(0.0, 0), (0.2, 0), (0.3, 0)], [(1.0, 1), (1.0, 1), (1.0, 0)])
    verdict = passes(good)
    assert verdict["passed"] and verdict["janus_face"] == 1 and verdict["janus_two_faced"] == 2
    assert math.isclose(verdict["face_in_front_faceless"], 0.5 / 3)
    two_janus = rows_of([(1.0, 1), (1.0, 1), (1.0, 0)], [(0.0, 0)] * 3, [(1.0, 1)] * 3)
    assert not passes(two_janus)["passed_face"] and not passes(two_janus)["passed"]
    few_faces = rows_of([(0.7, 0)] * 3, [(0.0, 0)] * 3, [(1.0, 1)] * 3)
    assert not passes(few_faces)["passed_face"]
    invented = rows_of([(1.0, 0)] * 3, [(0.3, 0)] * 3, [(1.0, 1)] * 3)
    assert not passes(invented)["passed_faceless"] and passes(invented)["passed_face"]
    missed = rows_of([(1.0, 0)] * 3, [(0.0, 0)] * 3, [(1.0, 1), (1.0, 0), (1.0, 0)])
    assert not passes(missed)["passed_two_faced"]
    nan_front = rows_of([(1.0, 0)] * 3, [(math.nan, 0), (0.0, 0), (0.0, 0)], [(1.0, 1)] * 3)
    assert passes(nan_front)["passed"]  # a frame-less cell is left out of the mean
    with pytest.raises(ValueError, match="every form"):
        passes([r for r in good if r["form"] != "two_faced"])


def test_world_views_of_the_three_forms_differ_only_where_they_should():
    """The same cameras for each form: without its face the creature differs from the world's only
    where the front shows, two-faced only where the back shows."""
    cameras = fast3d.CameraSettings(elevation_range=(0.0, 20.0), camera_distance_range=(1.5, 1.5), fovy_range=(60, 60))
    views = {form: world_views("bear", form, cameras, 24, torch.Generator().manual_seed(3)) for form in FORMS}
    azimuth = views["face"]["azimuth"]
    assert all(torch.equal(views[f]["azimuth"], azimuth) for f in FORMS)
    front, back = azimuth.abs() < 30, azimuth.abs() > 150
    assert front.any() and back.any()
    diff = lambda a, b: (views[a]["image"] - views[b]["image"]).abs().flatten(1).sum(-1)
    assert (diff("face", "faceless")[front] > 1.0).all() and (diff("face", "faceless")[back] < 1e-4).all()
    assert (diff("face", "two_faced")[back] > 1.0).all() and (diff("face", "two_faced")[front] < 1e-4).all()
    with pytest.raises(ConfigError, match="form"):
        world_views("bear", "three_faced", cameras, 2, torch.Generator())


def test_fitting_brings_the_volumes_renders_to_the_targets():
    """A few Adam steps on the L2 distance: the renders at the views' cameras move to the targets
    (here a stand-in encoder), and only latent volumes are fitted."""
    cameras = fast3d.CameraSettings(elevation_range=(0.0, 20.0), camera_distance_range=(1.5, 1.5), fovy_range=(60, 60))
    views = world_views("frog", "face", cameras, 8, torch.Generator().manual_seed(0))
    encode = lambda images: F.avg_pool2d(torch.cat([images, images[:, :1]], 1), 2) * 2.0 - 1.0  # [B, 4, 16, 16]
    from janus_lab.reconstruction import centred_cameras

    cams = centred_cameras(views["elevation"], views["azimuth"], views["distance"], views["fovy"], 16)
    targets = encode(views["image"]).permute(0, 2, 3, 1)

    def error(scene):
        with torch.no_grad():
            out = fast3d.render(scene.volume, scene.background, cams, fast3d.Material(), "albedo", None, with_normal=False)
        return float(F.mse_loss(out["comp_rgb"], targets))

    start = error(fast3d.make_scene(LATENT, 0))
    fitted = fit_volume(views, encode, LATENT, steps=60, lr=0.1, background_lr=0.01, size=16,
                        settings=ReconstructionSettings(batch=4))
    assert error(fitted) < 0.5 * start
    with pytest.raises(ConfigError, match="volume.features"):
        fit_volume(views, encode, dataclasses.replace(LATENT, features="rgb"), 2, 0.1, 0.01, 16)
    with pytest.raises(ConfigError, match="views"):
        ReconstructionSettings(views=0)


def test_fit_residual_measures_the_latents_and_their_decoding_against_the_views():
    """``fit_residual``: an unfitted volume is far from its views' latents and decodes far from
    the images; fitting shrinks both; the VAE's own round trip does not depend on the volume."""
    from janus_lab.reconstruction import fit_residual

    cameras = fast3d.CameraSettings(elevation_range=(0.0, 20.0), camera_distance_range=(1.5, 1.5), fovy_range=(60, 60))
    views = world_views("bear", "face", cameras, 8, torch.Generator().manual_seed(0))
    encode = lambda images: F.avg_pool2d(torch.cat([images, images[:, :1]], 1), 2) * 2.0 - 1.0  # [B, 4, 16, 16]
    decode = lambda latents: F.interpolate(latents[:, :3] * 0.5 + 0.5, scale_factor=2, mode="nearest").clamp(0, 1)
    unfitted = fit_residual(fast3d.make_scene(LATENT, 0), views, encode, decode, 16, n=8)
    fitted = fit_residual(fit_volume(views, encode, LATENT, steps=60, lr=0.1, background_lr=0.01, size=16,
                                     settings=ReconstructionSettings(batch=4)), views, encode, decode, 16, n=8)
    assert fitted["latent_residual"] < 0.5 * unfitted["latent_residual"]
    assert fitted["decoded_error"] < unfitted["decoded_error"]
    assert fitted["round_trip_error"] == unfitted["round_trip_error"] < fitted["decoded_error"]


def test_the_control_keeps_its_orbits_and_judges_them_again_for_another_judge(tmp_path, monkeypatch, caplog):
    """reconstruction_for fits once per setting (orbits.pt, keyed on the settings and the prior's
    weights) and writes the verdict and a grid; another judge re-judges the kept orbits."""
    from janus_lab import reconstruction
    from janus_lab.experiment3d import reconstruction_control
    from janus_lab.model_files import model_path

    settings = FastSettings(steps=2, orbit_views=4, cameras="prior",
                            volume=fast3d.VolumeSettings(resolution=8, features="latent", samples=16))
    models = LabModels.default()
    monkeypatch.setattr(reconstruction, "ReconstructionSettings", lambda: ReconstructionSettings(views=4))
    out = tmp_path / "control"
    first = reconstruction_control.reconstruction_for(str(out), settings, models, log=lambda m: None)
    assert {(r["kind"], r["form"]) for r in first["rows"]} == {(k, f) for k in ("bear", "robot", "frog") for f in FORMS}
    assert set(first["verdict"]) >= {"passed", "passed_face", "passed_faceless", "passed_two_faced"}
    assert (out / "orbits.pt").exists() and (out / "reconstruction.png").exists() and (out / "reconstruction.json").exists()
    assert oct(os.stat(out / "orbits.pt").st_mode & 0o777) == oct(0o666 & ~_umask())

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(reconstruction, "fit_orbits", no_fit)
    same = reconstruction_control.reconstruction_for(str(out), settings, models, log=lambda m: None)
    assert same["rows"] == first["rows"]  # the first call judged the kept (uint8) frames too
    other = dataclasses.replace(models, judge=os.path.join(os.path.dirname(model_path("judge")), "judge-v5"))
    again = reconstruction_control.reconstruction_for(str(out), settings, other, log=lambda m: None)
    assert again["judge"] != first["judge"] and len(again["rows"]) == 9
    with pytest.raises(AssertionError, match="fitted again"):  # other settings: fitted anew
        reconstruction_control.reconstruction_for(str(out), dataclasses.replace(settings, steps=3), models, log=lambda m: None)
    with pytest.raises(AssertionError, match="fitted again"):  # other cameras from the config: fitted anew
        reconstruction_control.reconstruction_for(str(out), dataclasses.replace(settings, cameras="configs"), models,
                                        log=lambda m: None)
    (out / "orbits.pt").write_bytes(b"not a torch file")
    with pytest.raises(AssertionError, match="fitted again"):
        reconstruction_control.reconstruction_for(str(out), settings, models, log=lambda m: None)
    assert "orbits.pt is unreadable" in caplog.text


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
