#!/usr/bin/env python3
"""The Janus metric (janus_lab.janus) and the outcome of the orbit (its ``OUTCOMES``) on
constructed orbits, judged by the committed judge: each kind, plain and with every attribute, as
the ground-truth creature, a two-faced one, one turned around and the same creature without its
face and smile (faceless), rendered by the world's ray caster from one orbit camera. Prints a
Markdown table.

    python custom/janus_lab/scripts/lab_constructed_orbits.py                            # the world's cameras
    python custom/janus_lab/scripts/lab_constructed_orbits.py --distance 2.0 --fovy 70   # the 3D experiment's orbit
"""

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout
import torch  # noqa: E402

from janus_lab.cli_args import integer_at_least, number_in, positive_number  # noqa: E402
from janus_lab.janus import orbit_metrics, outcome_name  # noqa: E402
from janus_lab.judge import Judge  # noqa: E402
from janus_lab.model_files import model_path  # noqa: E402
from janus_lab.orbits import orbit_azimuths, render_creature_orbit  # noqa: E402
from janus_lab.world import KINDS, Creature  # noqa: E402

KEYS = ("janus", "face_in_back", "front_segments", "view_accuracy", "a_jfd")


def constructed_orbits_report(judge=None, n: int = 36, elevation: float = 15.0, distance: float = 1.5,
                              fovy: float = 60.0) -> str:
    """The metric and the outcome on constructed orbits (each kind, plain and with every
    attribute; the ground-truth creature, a two-faced one, one turned around and a faceless one)
    seen from one orbit camera (``distance``, ``fovy``), as a Markdown table."""
    judge = judge or Judge.load(model_path("judge"))
    azimuths = orbit_azimuths(n)
    camera = dict(elevation=elevation, distance=distance, fovy=fovy)
    lines = ["| creature | orbit | " + " | ".join(KEYS) + " | outcome |", "| --- | --- |" + " --- |" * (len(KEYS) + 1)]
    for kind in KINDS:
        for creature in (Creature(kind), Creature(kind, smiling=True, striped=True, hat=True)):
            name = " ".join([a for a in ("smiling", "striped", "hat") if getattr(creature, a)] + [kind])
            faceless = dataclasses.replace(creature, face=False, smiling=False)
            for orbit, frames in (("ground truth", render_creature_orbit(creature, azimuths, **camera)),
                                  ("two-faced", render_creature_orbit(creature, azimuths, two_faced=True, **camera)),
                                  ("turned around", render_creature_orbit(creature, azimuths + 180.0, **camera)),
                                  ("faceless", render_creature_orbit(faceless, azimuths, **camera))):
                m = orbit_metrics(frames, azimuths, elevation, judge, kind=kind)
                lines.append(f"| {name} | {orbit} | " + " | ".join(
                    f"{m[k]:.3f}" if k in ("view_accuracy", "a_jfd") else f"{m[k]:g}" for k in KEYS)
                    + f" | {outcome_name(m)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elevation", type=number_in(-90.0, 90.0), default=15.0,
                        help="the orbit's elevation (degrees)")
    parser.add_argument("--distance", type=positive_number, default=1.5,
                        help="1.5: the world's cameras; 2.0: the 3D experiment's orbit")
    parser.add_argument("--fovy", type=number_in(0.0, 180.0, low_open=True, high_open=True), default=60.0,
                        help="60: the world's cameras; 70: the 3D experiment's orbit")
    parser.add_argument("--azimuths", type=integer_at_least(2), default=36,
                        help="frames of the orbit, uniformly spaced from 0 (an orbit needs at least 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(constructed_orbits_report(n=args.azimuths, elevation=args.elevation, distance=args.distance,
                                    fovy=args.fovy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
