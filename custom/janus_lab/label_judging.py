"""The instrument on a labelled set (preregistration.md, seventh entry, item 4): the judge's
values in the labels' fields (an orbit's outcome by the metric's rule on all its frames, its face
verdict on each shown frame; an image's view and face), their agreement with the reference
labels, the gate, and a report. Also the outcome the metric's rule gives on the labellers' own
frame labels, which tells a disagreement in the frames from one in the rule."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from .janus import judge_orbit, orbit_outcome
from .judge import Judge, judge_identity
from .label_agreement import (FACE_FIELDS, UNCLEAR, Labels, agreement, gate_verdict, judge_agreement)
from .label_sets import SHOWN_AZIMUTHS, Item, item_images, read_manifest, shown_frame_indices
from .model_files import model_path
from .orbits import orbit_azimuths
from .volume_orbits import load_orbit_frames
from .world import ATTRIBUTES, FRONT_ONLY, VIEWS

ORBIT_ELEVATION = 15.0  # the 3D experiment's orbit (FastSettings.orbit_elevation)


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def judge_orbit_item(item: Item, judge) -> Dict[str, str]:
    frames = load_orbit_frames(item.source)
    azimuths = orbit_azimuths(frames.shape[0])
    orbit = judge_orbit(frames, azimuths, ORBIT_ELEVATION, judge)
    labels = {"outcome": orbit_outcome(azimuths, orbit.front_only_visible)}
    for index, field in zip(shown_frame_indices(frames.shape[0]), FACE_FIELDS):
        labels[field] = yes_no(bool(orbit.front_only_visible[index]))
    return labels


def judge_images(items: Sequence[Item], judge) -> Labels:
    if not items:
        return {}
    out = judge(torch.stack([item_images(i)[0] for i in items]))
    front_only = [ATTRIBUTES.index(a) for a in FRONT_ONLY]
    face = (out["attribute_probs"][:, front_only] > 0.5).any(dim=1)
    return {i.id: {"view": VIEWS[int(v)], "face": yes_no(bool(f))} for i, v, f in zip(items, out["view"], face)}


def judged_labels(items: Sequence[Item], judge) -> Labels:
    """The judge's values, in the labels' fields, for every item."""
    judged = {i.id: judge_orbit_item(i, judge) for i in items if i.kind == "orbit"}
    judged.update(judge_images([i for i in items if i.kind == "image"], judge))
    return judged


def rule_on_labelled_frames(ref: Labels) -> Dict[str, str]:
    """The metric's outcome rule on the reference's frame labels (orbits whose 12 frames are all
    decided); the holistic outcome label stays the reference."""
    out = {}
    for item, labels in ref.items():
        faces = [labels.get(f, UNCLEAR) for f in FACE_FIELDS]
        if "outcome" in labels and UNCLEAR not in faces:
            out[item] = orbit_outcome(list(SHOWN_AZIMUTHS), [f == "yes" for f in faces])
    return out


def format_figures(name: str, figures: Mapping[str, Mapping[str, object]], gate: Optional[Mapping] = None) -> List[str]:
    lines = [f"### {name}", ""]
    for key, fig in figures.items():
        mark = ""
        if gate and key in gate["figures"]:
            row = gate["figures"][key]
            mark = f" (gate >= {row['gate']:.2f}: {'passed' if row['passed'] else 'FAILED'})"
        lines.append(f"- {key}: {fig['agree']} / {fig['n']} = {fig['rate']:.3f}{mark}; unclear reference {fig['unclear']}")
        for truth, row in sorted(fig["confusion"].items()):
            lines.append(f"    - labelled {truth}: " + ", ".join(f"{g} {c}" for g, c in sorted(row.items())))
    return lines + [""]


def judge_set(set_folder: str, judge) -> Dict[str, Labels]:
    """A set's reference labels and the judge's values on its labelled items."""
    with open(os.path.join(set_folder, "reference.json")) as f:
        ref = json.load(f)["labels"]
    return {"ref": ref, "judged": judged_labels([i for i in read_manifest(set_folder) if i.id in ref], judge)}


def pooled(parts: Mapping[str, Labels]) -> Labels:
    """Labels of several sets as one set, their ids prefixed with the set's folder name."""
    return {f"{os.path.basename(os.path.normpath(folder))}/{item}": labels
            for folder, part in parts.items() for item, labels in part.items()}


def evaluate_set(set_folder: str, judge_folder: Optional[str] = None) -> str:
    """``evaluate_sets`` on one set."""
    return evaluate_sets([set_folder], judge_folder)


def evaluate_sets(set_folders: Sequence[str], judge_folder: Optional[str] = None) -> str:
    """The judge against the reference labels (``reference.json``, from ``merge``) of one set or of
    the parts of one test set, pooled: the gate is on the pooled figures (each part's are reported
    beside them). Writes ``evaluation-<judge identity, 16 digits>.json`` in every set and returns a
    Markdown report."""
    names = [os.path.basename(os.path.normpath(f)) for f in set_folders]
    if len(set(map(os.path.realpath, set_folders))) != len(set_folders) or len(set(names)) != len(names):
        raise ValueError(f"a set is listed twice, or two sets share a folder name: {list(set_folders)}")
    judge_folder = judge_folder or model_path("judge")
    torch.set_num_threads(1)
    judge = Judge.load(judge_folder)
    data = {folder: judge_set(folder, judge) for folder in set_folders}
    ref = pooled({folder: d["ref"] for folder, d in data.items()})
    judged = pooled({folder: d["judged"] for folder, d in data.items()})
    figures = judge_agreement(ref, judged)
    gate = gate_verdict(figures)
    rule = rule_on_labelled_frames(ref)
    rule_figure = agreement({i: ref[i]["outcome"] for i in rule}, rule)
    identity = judge_identity(judge_folder)  # as a 3D run records its judge
    digest = identity[:16]
    parts = {folder: judge_agreement(d["ref"], d["judged"]) for folder, d in data.items()}
    for folder, d in data.items():
        record = {"judge": judge_folder, "judge_identity": identity, "figures": parts[folder], "gate": gate,
                  "rule_on_labelled_frames": rule_figure, "judged": d["judged"]}
        if len(data) > 1:  # the gate and the rule figure are the pooled set's
            record.update(pooled_with=list(set_folders), pooled_figures=figures)
        with open(os.path.join(folder, f"evaluation-{digest}.json"), "w") as f:
            json.dump(record, f, indent=1)
    lines = [f"## The judge {judge_folder} (digest {digest}) on {', '.join(set_folders)}", ""]
    if len(data) > 1:
        for folder in set_folders:
            lines += format_figures(f"{folder} alone (reported; the gate is on the pooled set)", parts[folder])
    lines += format_figures("judge against the reference labels" + (" (pooled)" if len(data) > 1 else ""),
                            figures, gate)
    lines += format_figures("the outcome rule on the labellers' frame labels (12 frames) against their outcome",
                            {"outcome": rule_figure})
    lines.append(f"**gate: {'PASSED' if gate['passed'] else 'FAILED'}**")
    return "\n".join(lines)
