#!/usr/bin/env python
"""The lab judges at a 3D orbit's effective resolution, on ground truth.

For each judge folder: ``judge_evaluation.held_out_lowres`` on the training recipe's held-out renders (the
world's creatures and creatures without their face, the seeds ``train_judge`` holds out), shrunk
to each ``--sides`` and enlarged back; and the probe that showed the problem: a bear seen from the
front (azimuths -20..20, distance 1.55, fovy 60), with and without its face, shrunk to 12 pixels
and passed through the prior's VAE (encode, decode), its mean face probability, and the VAE's
round-trip error on those views sharp and shrunk.

With ``--volume-probe`` also a bear with and without its face fitted into the fast path's latent
volume exactly as the reconstruction control fits it (the prior-framed cameras,
``janus_lab.reconstruction.fit_creature``): how its renders at its training cameras decode
(``fit_residual``: a latent space that decodes resampled latents in false colours shows a small
latent residual and a large decoded error), and each judge's verdict on its orbit.

    python custom/janus_lab/scripts/lab_judge_check.py --judges custom/janus_lab/models/judge custom/janus_lab/models/judge-v6 custom/janus_lab/models/judge-v5
    python custom/janus_lab/scripts/lab_judge_check.py --prior custom/janus_lab/models/prior-v3 --volume-probe
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout
import torch  # noqa: E402

from antijanus.utils.imaging import at_resolution  # noqa: E402
from janus_lab.cli_args import count, existing_folder, first_repeat, integer_at_least, refuse_repeats  # noqa: E402
from janus_lab.experiment3d import FastSettings, Representation, load_backbone  # noqa: E402
from janus_lab.fast3d import render_orbit as render_volume_orbit  # noqa: E402
from janus_lab.images import object_mask  # noqa: E402
from janus_lab.judge import Judge  # noqa: E402
from janus_lab.judge_data import render_labelled  # noqa: E402
from janus_lab.judge_evaluation import held_out_lowres  # noqa: E402
from janus_lab.judge_settings import JudgeSettings  # noqa: E402
from janus_lab.model_files import model_path  # noqa: E402
from janus_lab.orbits import orbit_azimuths, render_creature_orbit  # noqa: E402
from janus_lab.reconstruction import ReconstructionSettings, fit_creature, fit_residual, latent_means  # noqa: E402
from janus_lab.volume_orbits import frames_from_uint8, frames_to_uint8, judge_run_orbit  # noqa: E402
from janus_lab.world import ATTRIBUTES, Creature  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", nargs="+", type=existing_folder, default=[model_path("judge")])
    parser.add_argument("--sides", nargs="+", type=int, default=[12, 16, 32])
    parser.add_argument("--prior", type=existing_folder, default=model_path("prior"),
                        help="the prior whose VAE the probe uses")
    parser.add_argument("--n", type=integer_at_least(8), default=None,
                        help="held-out renders, at least 8: a quarter of them without the face "
                             "(default: the recipe's n_test)")
    parser.add_argument("--threads", type=count, default=1)
    parser.add_argument("--volume-probe", action="store_true",
                        help="also fit a bear with and without its face into the latent volume (README)")
    args = parser.parse_args(argv)
    if any(not 2 <= side <= 32 for side in args.sides):
        parser.error(f"--sides: pixels per side between 2 and 32, not {args.sides}")
    refuse_repeats(parser, args, ("--judges", "--sides"))
    names = [os.path.basename(os.path.normpath(folder)) for folder in args.judges]
    if first_repeat(names) is not None:  # the judges are told apart by their folder's name
        parser.error(f"argument --judges: two judge folders named {first_repeat(names)!r}")
    torch.set_num_threads(args.threads)
    start = time.time()
    recipe = JudgeSettings()
    n = recipe.n_test if args.n is None else args.n
    with_face = render_labelled(dataclasses.replace(recipe, p_faceless=0.0, p_tailless=0.0), n, recipe.seed + 1)
    faceless = render_labelled(dataclasses.replace(recipe, p_faceless=1.0, p_tailless=0.0), n // 4, recipe.seed + 3)
    backbone = load_backbone(args.prior)
    probe, vae_error = vae_probe(backbone)
    print(f"held-out renders: {n} with the face, {n // 4} without (seeds {recipe.seed + 1}, {recipe.seed + 3})")
    judges = {os.path.basename(os.path.normpath(folder)): Judge.load(folder) for folder in args.judges}
    probes = lowres_table(judges, with_face, faceless, tuple(args.sides), probe)
    print("the prior's VAE round trip (encode, decode) of those front views, mean absolute error per channel "
          "on the creature's pixels: "
          + ", ".join(f"{'with' if face else 'without'} its face at {side} pixels {error:.3f}"
                      for (face, side), error in vae_error.items()))
    print("front views of a bear at 12 pixels through the VAE, mean face probability:")
    for line in probes:
        print("  " + line)
    if args.volume_probe:
        volume_probe(backbone, judges)
    print(f"({time.time() - start:.0f} s)")
    return 0


def vae_probe(backbone):
    """A bear seen from the front (azimuths -20..20), with and without its face, through the
    prior's VAE: the decoded images at 12 pixels (by face) and the round-trip error on the
    creature's pixels (by face and side, sharp and shrunk)."""
    azimuths = torch.tensor([-20.0, -10.0, 0.0, 10.0, 20.0])
    torch.manual_seed(0)  # the VAE encoder samples its posterior
    probe, vae_error = {}, {}
    with torch.no_grad():
        for face in (True, False):
            sharp = render_creature_orbit(Creature("bear", face=face), azimuths, 15.0, 1.55, 60.0)
            creature = object_mask(sharp).expand_as(sharp)  # not the plain ground
            for side in (32, 12):
                image = at_resolution(sharp, side) if side < 32 else sharp
                decoded = backbone.decode_latents(backbone.encode_images(image)).float()
                vae_error[(face, side)] = float((decoded - image).abs()[creature].mean())
                if side == 12:
                    probe[face] = decoded
    return probe, vae_error


def lowres_table(judges: dict, with_face, faceless, sides, probe) -> list:
    """Print each judge's low-resolution rows (a Markdown table); return its line on the VAE probe."""
    print("| judge | side | view | face recall | face recall, front | no face on faceless | no face on faceless fronts |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    probes = []
    for name, judge in judges.items():
        for side, row in held_out_lowres(judge.net, with_face, faceless, sides=sides).items():
            print(f"| {name} | {side} | {row['view']:.3f} | {row['face_recall']:.3f} | {row['face_recall_front']:.3f} "
                  f"| {row['faceless_no_face']:.3f} | {row['faceless_no_face_front']:.3f} |")
        face_p = {face: float(judge(images)["attribute_probs"][:, ATTRIBUTES.index("face")].mean())
                  for face, images in probe.items()}
        probes.append(f"{name}: bear with its face {face_p[True]:.2f}, without {face_p[False]:.2f}")
    return probes


def volume_probe(backbone, judges: dict) -> None:
    """A bear with and without its face fitted as the reconstruction control fits it; ``judges``:
    name -> loaded judge."""
    settings = FastSettings(cameras="prior")
    representation = Representation.from_config(settings.volume, settings.steps, preset=settings.cameras)
    encode, size = latent_means(backbone), representation.cameras.height
    print("a bear fitted into the latent volume (prior-framed cameras, the reconstruction control's fit):")
    for form in ("face", "faceless"):
        scene, views = fit_creature("bear", form, encode, settings, representation, ReconstructionSettings())
        fit = fit_residual(scene, views, encode, backbone.decode_latents, size)
        with torch.no_grad():
            orbit, _ = render_volume_orbit(scene, orbit_azimuths(settings.orbit_views), settings.orbit_elevation,
                                           representation.orbit_distance, representation.orbit_fovy,
                                           representation.material, settings.steps, resolution=size,
                                           decode=backbone.decode_latents)
        orbit = frames_from_uint8(frames_to_uint8(orbit))  # as a run keeps and judges it
        print(f"  {form}: latent residual {fit['latent_residual']:.3f}, its training views decoded: error "
              f"{fit['decoded_error']:.3f} on the creature's pixels (the VAE's round trip {fit['round_trip_error']:.3f})")
        for name, judge in judges.items():
            m = judge_run_orbit(orbit, judge, "a bear", settings)
            print(f"    {name}: orbit Janus {m['janus']:.0f}, face in front "
                  f"{m['face_in_front']:.2f}, view accuracy {m['view_accuracy']:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
