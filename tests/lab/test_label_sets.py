"""Labelled sets of method outputs (janus_lab.label_sets, label_agreement, scripts/lab_label_set.py):
items shuffled under ids that reveal nothing, sheets without verdicts, labels read strictly, the
reference from two labellers and a third, agreement and the pre-registered gate."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from antijanus.utils.errors import ConfigError
from janus_lab.label_agreement import (GATE, agreement, cohen_kappa, gate_verdict, read_labels, reference)
from janus_lab.label_sets import (SHOWN_AZIMUTHS, image_sources, item_images, make_items, orbit_sources,
                                  read_manifest, shown_frame_indices, write_manifest, write_sheets)
from tests.helpers import REPO

SCRIPT = os.path.join(REPO, "custom", "janus_lab", "scripts", "lab_label_set.py")


def fake_run(root, variant, prompt, seed, value):
    folder = root / "runs" / variant / prompt.replace(" ", "_") / f"s{seed}"
    folder.mkdir(parents=True)
    frames = torch.full((36, 3, 32, 32), value, dtype=torch.uint8)
    frames[:, 0, 0, 0] = torch.arange(36, dtype=torch.uint8)  # frame index in a pixel
    torch.save(frames, folder / "orbit.pt")
    (folder / "result.json").write_text(json.dumps({"variant": variant, "prompt": prompt, "seed": seed}))
    return folder


@pytest.fixture
def sources(tmp_path):
    runs = tmp_path / "lab3d"
    for n, variant in enumerate(("baseline", "perp-neg", "dsds-clip")):
        fake_run(runs, variant, "a bear", 60, 10 * n)
    (runs / "runs" / "unfinished").mkdir(parents=True)  # no result.json: not an item
    view2d = tmp_path / "lab2d"
    view2d.mkdir()
    records = [{"method": m, "kind": "bear", "view": "back", "seed": s, "row": m} for m in ("vanilla", "perp-neg")
               for s in (0, 1)]
    torch.save({"images": torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), "records": records},
               view2d / "samples.pt")
    return str(runs), str(view2d)


def test_items_are_shuffled_under_ids_that_reveal_nothing_and_reproducible(sources):
    orbits, images = orbit_sources([sources[0]]), image_sources([sources[1]])
    assert len(orbits) == 3 and len(images) == 4
    items = make_items(orbits, images)
    assert [i.id for i in items] == ["o000", "o001", "o002", "i000", "i001", "i002", "i003"]
    assert make_items(orbits, images) == items
    for item in items:
        assert "baseline" not in item.id and "bear" not in item.id


def test_manifest_round_trip_and_sheets(sources, tmp_path):
    items = make_items(orbit_sources([sources[0]]), image_sources([sources[1]]))
    write_manifest(items, str(tmp_path / "set"))
    assert read_manifest(str(tmp_path / "set")) == items
    paths = write_sheets(items, str(tmp_path / "sheets"))
    assert sorted(os.path.basename(p) for p in paths) == ["images-00.png", "orbits-00.png"]
    orbit = next(i for i in items if i.kind == "orbit")
    shown = item_images(orbit)
    assert len(shown) == len(SHOWN_AZIMUTHS)
    # the shown frames are those at azimuth 0, 30, ... of the 36-view orbit (every third frame)
    assert [round(float(f[0, 0, 0]) * 255) for f in shown] == list(range(0, 36, 3))


def test_shown_frames_need_an_orbit_with_those_azimuths():
    assert shown_frame_indices(36) == list(range(0, 36, 3))
    assert shown_frame_indices(12) == list(range(12))
    with pytest.raises(ValueError, match="azimuth 30"):
        shown_frame_indices(8)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_labels_are_read_strictly(tmp_path):
    good = write(tmp_path / "labels-a-images.csv", "id,view,face\ni000,Back,no\ni001,unclear, yes\n")
    assert read_labels(good) == {"i000": {"view": "back", "face": "no"}, "i001": {"view": "unclear", "face": "yes"}}
    bad = write(tmp_path / "labels-b-images.csv", "id,view,face\ni000,behind,no\n")
    with pytest.raises(ConfigError, match=r"labels-b-images.csv:i000.view.*front"):
        read_labels(bad)
    twice = write(tmp_path / "labels-c-images.csv", "id,view,face\ni000,back,no\ni000,back,no\n")
    with pytest.raises(ConfigError, match="twice"):
        read_labels(twice)


def test_reference_agreement_third_labeller_and_pending_cells():
    first = {"o1": {"outcome": "janus"}, "o2": {"outcome": "no_face"}, "o3": {"outcome": "janus"}}
    second = {"o1": {"outcome": "janus"}, "o2": {"outcome": "one_face_front"}, "o3": {"outcome": "no_face"}}
    ref, pending = reference(first, second, {})
    assert ref["o1"]["outcome"] == "janus" and ref["o2"]["outcome"] == "unclear"
    assert sorted(pending) == [("o2", "outcome"), ("o3", "outcome")]
    ref, pending = reference(first, second, {"o2": {"outcome": "no_face"}, "o3": {"outcome": "face_elsewhere"}})
    assert ref["o2"]["outcome"] == "no_face"  # majority of three
    assert ref["o3"]["outcome"] == "unclear"  # three different answers
    assert pending == []


def test_kappa_and_agreement_leave_out_unclear_truth():
    assert cohen_kappa([("a", "a"), ("b", "b")]) == 1.0
    assert cohen_kappa([("a", "a"), ("b", "b"), ("a", "b"), ("b", "a")]) == 0.0
    assert math.isnan(cohen_kappa([]))
    result = agreement({"x": "janus", "y": "no_face", "z": "unclear"}, {"x": "janus", "y": "janus", "z": "janus"})
    assert (result["n"], result["agree"], result["rate"], result["unclear"]) == (2, 1, 0.5, 1)
    assert result["confusion"] == {"janus": {"janus": 1}, "no_face": {"janus": 1}}


def test_gate_needs_every_figure_at_its_threshold():
    passing = {k: {"rate": v} for k, v in GATE.items()}
    assert gate_verdict(passing)["passed"]
    for key in GATE:
        failing = dict(passing, **{key: {"rate": GATE[key] - 0.01}})
        assert not gate_verdict(failing)["passed"]
    assert not gate_verdict(dict(passing, outcome={"rate": float("nan")}))["passed"]
    assert not gate_verdict({"outcome": {"rate": 1.0}})["passed"]  # a missing figure fails


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_script_sheets_and_merge(sources, tmp_path):
    out = run_script("sheets", "--set", str(tmp_path / "set"), "--runs", sources[0], "--view2d", sources[1],
                     "--sheets", str(tmp_path / "sheets"))
    assert out.returncode == 0, out.stderr
    assert "3 orbits, 4 images" in out.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_script("sheets", "--set", str(tmp_path / "set2"), "--runs", str(empty), "--sheets", str(tmp_path / "s2"))
    assert out.returncode == 1 and "no finished runs" in out.stderr
    write(tmp_path / "set" / "labels-ann-images.csv", "id,view,face\ni000,back,no\ni001,side,yes\n")
    write(tmp_path / "set" / "labels-bob-images.csv", "id,view,face\ni000,back,no\ni001,front,yes\n")
    out = run_script("merge", "--set", str(tmp_path / "set"), "--labellers", "ann", "bob")
    assert out.returncode == 0, out.stderr
    assert "undecided (first two disagree, no third label): 1" in out.stdout
    saved = json.loads((tmp_path / "set" / "reference.json").read_text())
    assert saved["labels"]["i000"] == {"view": "back", "face": "no"} and saved["pending"] == [["i001", "view"]]
    assert (tmp_path / "set" / "pending.csv").read_text() == "id,field\ni001,view\n"
    write(tmp_path / "set" / "labels-cat-images.csv", "id,view,face\ni001,side,yes\n")
    out = run_script("merge", "--set", str(tmp_path / "set"), "--labellers", "ann", "bob", "--third", "cat")
    assert out.returncode == 0 and not (tmp_path / "set" / "pending.csv").exists()
    assert json.loads((tmp_path / "set" / "reference.json").read_text())["labels"]["i001"]["view"] == "side"
    out = run_script("merge", "--set", str(tmp_path / "set"), "--labellers", "ann", "carol")
    assert out.returncode == 1 and "carol" in out.stderr
    out = run_script("merge", "--set", str(tmp_path / "set"), "--labellers", "ann", "ann")
    assert out.returncode == 2 and "listed twice" in out.stderr


def test_evaluate_set_judges_items_and_writes_the_gate(tmp_path):
    from janus_lab.label_judging import evaluate_set, rule_on_labelled_frames
    from janus_lab.orbits import orbit_azimuths, render_creature_orbit
    from janus_lab.volume_orbits import save_orbit
    from janus_lab.world import Creature

    torch.set_num_threads(1)
    azimuths = orbit_azimuths(36)
    runs = tmp_path / "runs"
    for name, two_faced in (("one", False), ("two", True)):
        folder = fake_run(runs, name, "a bear", 60, 0)
        save_orbit(str(folder), render_creature_orbit(Creature("bear"), azimuths, two_faced=two_faced, elevation=15.0))
    items = make_items(orbit_sources([str(runs)]), [])
    set_folder = tmp_path / "set"
    write_manifest(items, str(set_folder))
    truth = {i.id: ("janus" if i.meta["variant"] == "two" else "one_face_front") for i in items}
    faces = {a: a in (0, 30, 330) for a in SHOWN_AZIMUTHS}
    ref = {i: {"outcome": o, **{f"face_{a:03d}": ("yes" if faces[a] or (o == "janus" and a in (150, 180, 210)) else "no")
                                for a in SHOWN_AZIMUTHS}} for i, o in truth.items()}
    assert rule_on_labelled_frames(ref) == truth
    (set_folder / "reference.json").write_text(json.dumps({"labels": ref}))
    report = evaluate_set(str(set_folder))
    assert "outcome: 2 / 2 = 1.000" in report  # the committed judge on the world's own creatures
    saved = json.loads(next(set_folder.glob("evaluation-*.json")).read_text())
    assert {i: saved["judged"][i]["outcome"] for i in truth} == truth
    assert saved["figures"]["frame_face"]["n"] == 24
    assert not saved["gate"]["passed"]  # no images labelled: the image figures are missing
    # the parts of one test set: the gate on the pooled figures, each part's beside them
    import shutil
    from janus_lab.label_judging import evaluate_sets
    other = tmp_path / "other"
    shutil.copytree(set_folder, other)
    (other / saved_name(set_folder)).unlink()
    wrong = {i: {**labels, "outcome": "no_face"} for i, labels in ref.items()}  # the judge disagrees here
    (other / "reference.json").write_text(json.dumps({"labels": wrong}))
    both = evaluate_sets([str(set_folder), str(other)])
    assert "outcome: 2 / 4 = 0.500" in both and both.count("alone (reported") == 2
    for part, rate in ((set_folder, 1.0), (other, 0.0)):
        record = json.loads((part / saved_name(set_folder)).read_text())
        assert record["figures"]["outcome"]["rate"] == rate and record["pooled_figures"]["outcome"]["rate"] == 0.5
        assert record["gate"]["figures"]["outcome"]["rate"] == 0.5
        assert record["pooled_figures"]["frame_face"]["n"] == 48 and record["figures"]["frame_face"]["n"] == 24
        assert record["pooled_with"] == [str(set_folder), str(other)]
    twin = tmp_path / "elsewhere" / "set"
    shutil.copytree(set_folder, twin)
    for folders in ([set_folder, set_folder], [set_folder, twin]):
        with pytest.raises(ValueError, match="twice"):
            evaluate_sets([str(f) for f in folders])


def saved_name(folder):
    return next(folder.glob("evaluation-*.json")).name


def test_a_rewritten_samples_file_is_read_again(tmp_path):
    from janus_lab.label_sets import Item

    path = tmp_path / "samples.pt"
    item = Item("i000", "image", f"{path}#0", {})
    for value in (10, 200):
        torch.save({"images": torch.full((1, 3, 32, 32), value, dtype=torch.uint8), "records": []}, path)
        os.utime(path, ns=(value, value))  # a new modification time, as a rewrite gives
        assert round(float(item_images(item)[0].max()) * 255) == value


def test_people_table_reads_a_tables_outcomes_from_the_reference_labels(tmp_path):
    """Labelled orbits that are a table's runs: outcome rates and paired tests with the labels in
    the judge's place; an unclear outcome counts in no rate and no pair; a run labelled in two
    sets is refused."""
    from janus_lab.label_sets import Item
    from janus_lab.label_tables import labelled_results, people_table

    def labelled(name, rows):
        items = [Item(f"o{k:03d}", "orbit", "unused", {"variant": v, "prompt": p, "seed": s})
                 for k, (v, p, s, _) in enumerate(rows)]
        write_manifest(items, str(tmp_path / name))
        ref = {i.id: {"outcome": o} for i, (*_, o) in zip(items, rows)}
        (tmp_path / name / "reference.json").write_text(json.dumps({"labels": ref}))
        return str(tmp_path / name)

    first = labelled("one", [("baseline", "a smiling bear", 1, "janus"), ("perp-neg", "a smiling bear", 1, "one_face_front"),
                             ("baseline", "a bear", 1, "no_face"), ("perp-neg", "a bear", 1, "unclear")])
    second = labelled("two", [("baseline", "a smiling bear", 2, "janus"), ("perp-neg", "a smiling bear", 2, "janus")])
    results = labelled_results([first, second])
    assert len(results) == 6 and sum(not r["metrics"] for r in results) == 1
    table = people_table([first, second])
    assert "6 labelled orbits, 1 with an unclear outcome" in table
    assert "| baseline | all prompts | 3 | 0.67 [0.21, 0.94] (2) |" in table
    assert "| perp-neg | all prompts | 2 | 0.50 [0.09, 0.91] (1) | 0.50 [0.09, 0.91] (1) |" in table
    # pairs: (smiling, 1) janus -> front, (smiling, 2) janus -> janus; (plain, 1) has no perp-neg outcome
    assert "| perp-neg | baseline | all prompts | 3 | 1 / 0 of 2 | 1.000 |" in table
    duplicate = labelled("three", [("baseline", "a bear", 1, "no_face")])
    with pytest.raises(ValueError, match="two sets"):
        labelled_results([first, duplicate])


def test_the_committed_sets_give_the_documented_people_reading():
    """The lab docs' labellers' column of the 3D table (seeds 70-73 = sets C, D, E1, E2), from the
    committed manifests and reference labels alone."""
    from janus_lab.label_tables import labelled_results
    from janus_lab.locations import lab_root

    validation = os.path.join(os.path.dirname(lab_root()), "validation")
    results = labelled_results([os.path.join(validation, s) for s in ("set-c", "set-d", "set-e1", "set-e2")])
    assert len(results) == 288 and sum(not r["metrics"] for r in results) == 24

    def counts(variant):
        mine = [r["metrics"] for r in results if r["variant"] == variant and r["metrics"]]
        return tuple(int(sum(m[f"outcome_{k}"] for m in mine)) for k in ("janus", "one_face_front", "no_face"))

    assert counts("baseline") == (10, 0, 12) and counts("perp-neg") == (4, 18, 1)
    assert counts("vsd") == (5, 2, 13) and counts("vsd-perp-neg") == (2, 7, 12)
