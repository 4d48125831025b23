"""Labels of a labelled set (preregistration.md, seventh entry, items 3-4): the labellers' files,
the reference labels (two labellers, a third where they disagree), their agreement, and the
judge's agreement with the reference, the instrument's gate.

Label files are CSV. Orbits: ``id,outcome,face_000,face_030,...,face_330``; images:
``id,view,face``. Values: ``OUTCOMES``, ``VIEW_LABELS``, ``FACE_LABELS``; "unclear" everywhere.
"""

from __future__ import annotations

import csv
import glob
import os
from collections import Counter
from typing import Dict, List, Mapping, Sequence, Tuple

from antijanus.utils.errors import ConfigError

from .label_sets import SHOWN_AZIMUTHS

UNCLEAR = "unclear"
OUTCOMES = ("janus", "one_face_front", "face_elsewhere", "no_face", UNCLEAR)
VIEW_LABELS = ("front", "side", "back", "overhead", UNCLEAR)
FACE_LABELS = ("yes", "no", UNCLEAR)
FACE_FIELDS = tuple(f"face_{a:03d}" for a in SHOWN_AZIMUTHS)
ORBIT_FIELDS = ("outcome", *FACE_FIELDS)
IMAGE_FIELDS = ("view", "face")
GATE = {"outcome": 0.80, "janus": 0.85, "frame_face": 0.90, "image_view": 0.80, "image_face": 0.90}

Labels = Dict[str, Dict[str, str]]  # item id -> field -> value


def allowed(field: str) -> Tuple[str, ...]:
    return OUTCOMES if field == "outcome" else VIEW_LABELS if field == "view" else FACE_LABELS


def read_labels(path: str) -> Labels:
    """One labeller's file; a value outside its field's list is a ConfigError naming the cell."""
    out: Labels = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            item = row.pop("id").strip()
            if item in out:
                raise ConfigError(os.path.basename(path), item, "item labelled twice")
            values = {k.strip(): (v or "").strip().lower() for k, v in row.items() if k}
            for field, value in values.items():
                if value not in allowed(field):
                    raise ConfigError(f"{os.path.basename(path)}:{item}.{field}", value, "not a label", list(allowed(field)))
            out[item] = values
    return out


def labeller_files(set_folder: str) -> Dict[str, Labels]:
    """labeller name -> labels, from every ``labels-<name>*.csv`` of the set (orbit and image files
    of one labeller are merged)."""
    out: Dict[str, Labels] = {}
    for path in sorted(glob.glob(os.path.join(set_folder, "labels-*.csv"))):
        name = os.path.basename(path)[len("labels-"):-len(".csv")].split("-")[0]
        out.setdefault(name, {}).update(read_labels(path))
    return out


def reference(first: Labels, second: Labels, third: Labels) -> Tuple[Labels, List[Tuple[str, str]]]:
    """The reference labels: the value two labellers agree on, else the third's decision by
    majority (three different answers: unclear). Also the (item, field) cells still undecided
    (the first two disagree and the third has not labelled them)."""
    ref: Labels = {}
    pending = []
    for item in sorted(set(first) & set(second)):
        ref[item] = {}
        for field in first[item]:
            a, b = first[item][field], second[item].get(field, UNCLEAR)
            if a == b:
                ref[item][field] = a
            elif item in third and field in third[item]:
                votes = Counter([a, b, third[item][field]]).most_common(1)[0]
                ref[item][field] = votes[0] if votes[1] >= 2 else UNCLEAR
            else:
                ref[item][field] = UNCLEAR
                pending.append((item, field))
    return ref, pending


def cohen_kappa(pairs: Sequence[Tuple[str, str]]) -> float:
    """Cohen's kappa of two labellers' values (nan when chance agreement is 1)."""
    n = len(pairs)
    if n == 0:
        return float("nan")
    observed = sum(a == b for a, b in pairs) / n
    left, right = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    chance = sum(left[k] * right[k] for k in left) / (n * n)
    return float("nan") if chance == 1 else (observed - chance) / (1 - chance)


def agreement(truth: Mapping[str, str], guess: Mapping[str, str]) -> Dict[str, object]:
    """Agreement of ``guess`` with ``truth`` over the keys both have, unclear truth left out, with
    the confusion matrix (truth -> guess -> count)."""
    keys = [k for k in truth if k in guess and truth[k] != UNCLEAR]
    confusion: Dict[str, Dict[str, int]] = {}
    for k in keys:
        row = confusion.setdefault(truth[k], {})
        row[guess[k]] = row.get(guess[k], 0) + 1
    right = sum(truth[k] == guess[k] for k in keys)
    return {"n": len(keys), "agree": right, "rate": right / len(keys) if keys else float("nan"),
            "unclear": sum(truth[k] == UNCLEAR for k in truth), "confusion": confusion}


def is_janus(outcome: str) -> str:
    return UNCLEAR if outcome == UNCLEAR else ("janus" if outcome == "janus" else "not_janus")


def judge_agreement(ref: Labels, judged: Labels) -> Dict[str, Dict[str, object]]:
    """The gate's figures: ``judged`` holds the instrument's values in the labels' fields."""
    orbits = [i for i in ref if "outcome" in ref[i]]
    images = [i for i in ref if "view" in ref[i]]
    frames_truth = {f"{i}.{f}": ref[i][f] for i in orbits for f in FACE_FIELDS}
    frames_guess = {f"{i}.{f}": judged[i][f] for i in orbits if i in judged for f in FACE_FIELDS}
    return {
        "outcome": agreement({i: ref[i]["outcome"] for i in orbits}, {i: judged[i]["outcome"] for i in orbits if i in judged}),
        "janus": agreement({i: is_janus(ref[i]["outcome"]) for i in orbits},
                           {i: is_janus(judged[i]["outcome"]) for i in orbits if i in judged}),
        "frame_face": agreement(frames_truth, frames_guess),
        "image_view": agreement({i: ref[i]["view"] for i in images}, {i: judged[i]["view"] for i in images if i in judged}),
        "image_face": agreement({i: ref[i]["face"] for i in images}, {i: judged[i]["face"] for i in images if i in judged}),
    }


def gate_verdict(figures: Mapping[str, Mapping[str, object]]) -> Dict[str, object]:
    """Each gated figure against its pre-registered threshold, and whether all pass."""
    rows = {k: {"rate": figures[k]["rate"], "gate": v, "passed": bool(figures[k]["rate"] >= v)}
            for k, v in GATE.items() if k in figures}
    return {"figures": rows, "passed": all(r["passed"] for r in rows.values()) and len(rows) == len(GATE)}
