"""The judge's face verdict calibrated on a labelled set (janus_lab.judge_calibration,
scripts/lab_label_set.py calibrate): the probe, the calibrated judge folder, the command."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from janus_lab.judge import Judge
from janus_lab.judge_calibration import calibrate, fit_probe, hidden_features
from janus_lab.label_sets import SHOWN_AZIMUTHS, make_items, orbit_sources, write_manifest
from janus_lab.model_files import model_path
from janus_lab.world import ATTRIBUTES, FRONT_ONLY
from tests.helpers import REPO
from tests.lab.test_label_sets import fake_run

SCRIPT = os.path.join(REPO, "custom", "janus_lab", "scripts", "lab_label_set.py")
V8 = os.path.join(os.path.dirname(model_path("judge")), "judge-v8")  # an uncalibrated base judge (the lab judge is a calibrated one)


def test_probe_separates_and_is_expressed_on_raw_features():
    torch.manual_seed(0)
    x = torch.randn(200, 3) * torch.tensor([5.0, 0.1, 30.0]) + torch.tensor([0.0, 2.0, -7.0])
    y = (x[:, 0] > 1.0).float()
    w, b = fit_probe(x, y, 1e-4)
    assert ((x @ w + b > 0).float() == y).float().mean() >= 0.98
    assert w[0] > 0 and abs(float(w[0])) > 10 * abs(float(w[1] * 0.1))
    with pytest.raises(ValueError, match="both labels"):
        fit_probe(x, torch.ones(200), 1e-3)


@pytest.fixture
def labelled_set(tmp_path):
    """Two world orbits (one face in front; faces front and back) labelled as a person would."""
    from janus_lab.orbits import orbit_azimuths, render_creature_orbit
    from janus_lab.volume_orbits import save_orbit
    from janus_lab.world import Creature

    torch.set_num_threads(1)
    runs = tmp_path / "runs"
    for name, kind, two_faced in (("one", "bear", False), ("two", "bear", True), ("three", "frog", False)):
        folder = fake_run(runs, name, f"a {kind}", 60, 0)
        save_orbit(str(folder), render_creature_orbit(Creature(kind), orbit_azimuths(36), two_faced=two_faced,
                                                      elevation=15.0))
    items = make_items(orbit_sources([str(runs)]), [])
    folder = tmp_path / "set"
    write_manifest(items, str(folder))
    ref = {}
    for item in items:
        two = item.meta["variant"] == "two"
        ref[item.id] = {"outcome": "janus" if two else "one_face_front",
                        **{f"face_{a:03d}": "yes" if a in (0, 30, 330) or (two and a in (150, 180, 210)) else "no"
                           for a in SHOWN_AZIMUTHS}}
    ref[items[0].id]["face_090"] = "unclear"  # left out of the examples
    (folder / "reference.json").write_text(json.dumps({"labels": ref}))
    return str(folder), ref


def test_calibrated_judge_gives_the_probe_verdict_and_keeps_the_rest(labelled_set, tmp_path):
    set_folder, ref = labelled_set
    base = V8
    out = str(tmp_path / "calibrated")
    record = calibrate(base, [set_folder], out, folds=3)["calibration"]
    assert record["frames"] == 35 and record["images"] == 0 and record["faces"] == 12
    assert set(record["cross_validated"]) == {"folds", "pooled"}
    assert set(record["cross_validated"]["pooled"]) == {"frame_face", "outcome", "janus"}
    before, after = Judge.load(base), Judge.load(out)
    rows = [ATTRIBUTES.index(a) for a in FRONT_ONLY]
    kept = [i for i in range(len(ATTRIBUTES)) if i not in rows]
    for name, tensor in before.net.state_dict().items():
        if not name.startswith("attributes."):
            assert torch.equal(tensor, after.net.state_dict()[name]), name
    assert torch.equal(before.net.attributes.weight[kept], after.net.attributes.weight[kept])
    assert torch.equal(after.net.attributes.weight[rows[0]], after.net.attributes.weight[rows[1]])
    # in-sample the probe reproduces every labelled frame of these clean orbits
    from janus_lab.label_judging import judged_labels
    from janus_lab.label_sets import read_manifest
    judged = judged_labels(read_manifest(set_folder), after)
    for item, labels in ref.items():
        assert judged[item]["outcome"] == labels["outcome"]
        assert all(judged[item][f] == v for f, v in labels.items() if f != "outcome" and v != "unclear")
    # the features the probe reads are the judge's own hidden layer
    frames = torch.rand(2, 3, 32, 32)
    logits = after.net(frames * 1.0)["attributes"]
    assert torch.allclose(logits[:, rows[0]], hidden_features(after.net, frames) @ after.net.attributes.weight[rows[0]]
                          + after.net.attributes.bias[rows[0]], atol=1e-5)


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_calibrate_command(labelled_set, tmp_path):
    set_folder, _ = labelled_set
    out = run_script("calibrate", "--set", set_folder, "--judge", V8, "--out", str(tmp_path / "j"),
                     "--folds", "3")
    assert out.returncode == 0, out.stderr
    assert "35 frames and 0 images (12.0 faces, targets reference)" in out.stdout and "frame_face" in out.stdout
    assert os.path.isfile(tmp_path / "j" / "judge.safetensors")
    again = run_script("calibrate", "--set", set_folder, "--judge", V8, "--out", str(tmp_path / "j"))
    assert again.returncode == 2 and "--out" in again.stderr
    zero = run_script("calibrate", "--set", set_folder, "--judge", V8, "--out", str(tmp_path / "k"),
                      "--weight-decay", "0")
    assert zero.returncode == 2 and "--weight-decay" in zero.stderr


def test_vote_targets_threshold_and_other_sets(labelled_set, tmp_path):
    """Targets from the labellers' votes (share of yes), the threshold folded into the bias, a
    second set judged by a probe fit on the first (across_sets)."""
    import shutil

    set_folder, ref = labelled_set
    items = sorted(ref)
    header = "id,outcome," + ",".join(f"face_{a:03d}" for a in SHOWN_AZIMUTHS) + "\n"
    rows = {name: header + "".join(
        f"{i},{ref[i]['outcome']}," + ",".join(
            ("no" if name == "bob" and a == 30 else ref[i][f"face_{a:03d}"]) for a in SHOWN_AZIMUTHS) + "\n"
        for i in items) for name in ("ann", "bob")}
    for name, text in rows.items():
        with open(os.path.join(set_folder, f"labels-{name}-orbits.csv"), "w") as f:
            f.write(text)
    base = V8
    votes = calibrate(base, [set_folder], str(tmp_path / "v"), targets="votes", folds=3)["calibration"]
    # 35 voted frames (face_090 of one orbit: both said unclear); at 30 degrees ann said yes and
    # bob no: 0.5 on each orbit
    assert votes["frames"] == 35 and votes["faces"] == 12 - 3 * 0.5
    shifted = calibrate(base, [set_folder], str(tmp_path / "t"), targets="votes", threshold=0.7, folds=3)
    a, b = Judge.load(str(tmp_path / "v")).net, Judge.load(str(tmp_path / "t")).net
    face = ATTRIBUTES.index("face")
    assert torch.allclose(a.attributes.weight[face], b.attributes.weight[face])
    assert float((a.attributes.bias[face] - b.attributes.bias[face]).detach()) == pytest.approx(math.log(0.7 / 0.3), abs=1e-2)
    assert shifted["calibration"]["threshold"] == 0.7
    other = tmp_path / "other"
    shutil.copytree(set_folder, other)
    both = calibrate(base, [set_folder, str(other)], str(tmp_path / "b"), folds=2)["calibration"]
    assert set(both["cross_validated"]) == {"folds", "pooled", "across_sets"}
    with pytest.raises(ValueError, match="threshold"):
        calibrate(base, [set_folder], str(tmp_path / "x"), threshold=1.0)


def test_finetuned_judge_keeps_its_views_and_moves_its_face(labelled_set, tmp_path):
    """method finetune: a copy of the network learns the face from the labels and is paired with the
    base judge, whose every other output is kept exactly; smiling = face; the record says how."""
    from janus_lab.judge_calibration import FINETUNE
    from janus_lab.label_sets import read_manifest
    from janus_lab.volume_orbits import load_orbit_frames

    set_folder, _ = labelled_set
    base = V8
    record = calibrate(base, [set_folder], str(tmp_path / "f"), method="finetune", folds=0)["calibration"]
    assert record["method"] == "finetune" and record["finetune"] == FINETUNE and record["cross_validated"] == {"folds": 0}
    before, after = Judge.load(base), Judge.load(str(tmp_path / "f"))
    frames = torch.cat([load_orbit_frames(i.source) for i in read_manifest(set_folder)])
    old, new = before.net(frames), after.net(frames)
    for head in ("view", "kind", "camera"):
        assert torch.equal(old[head], new[head]), head
    face, smiling = ATTRIBUTES.index("face"), ATTRIBUTES.index("smiling")
    kept = [i for i in range(len(ATTRIBUTES)) if i not in (face, smiling)]
    assert torch.equal(old["attributes"][:, kept], new["attributes"][:, kept])
    assert not torch.equal(old["attributes"][:, face], new["attributes"][:, face])
    assert torch.equal(new["attributes"][:, face], new["attributes"][:, smiling])
    assert not torch.equal(before.net.features[0][0].weight, after.net.face.features[0][0].weight)
    with pytest.raises(ValueError, match="method"):
        calibrate(base, [set_folder], str(tmp_path / "x"), method="retrain")


def test_a_paired_judge_runs_the_orbit_metric_and_is_not_calibrated_again(labelled_set, tmp_path):
    """The metric's a_jfd reads the judge's features: a paired judge gives its base's; calibrating a
    paired judge again is refused (calibrate its base)."""
    from janus_lab.janus import orbit_metrics
    from janus_lab.orbits import orbit_azimuths

    set_folder, _ = labelled_set
    calibrate(V8, [set_folder], str(tmp_path / "p"), method="finetune", folds=0)
    paired = Judge.load(str(tmp_path / "p"))
    assert paired.net.features is paired.net.base.features
    metrics = orbit_metrics(torch.rand(12, 3, 32, 32), orbit_azimuths(12), 15.0, paired, kind="bear")
    assert "a_jfd" in metrics and "outcome" in metrics
    with pytest.raises(ValueError, match="paired"):
        calibrate(str(tmp_path / "p"), [set_folder], str(tmp_path / "again"))


def test_pooled_folds_keep_twins_of_a_held_out_item_out_of_training(labelled_set):
    """Orbits of one prompt and seed (the variants of one initialisation) share a fold."""
    from janus_lab.judge_calibration import LabelledSet, cross_validate

    set_folder, _ = labelled_set
    data = LabelledSet(set_folder, Judge.load(V8).net, "reference")
    seen = []

    class Spy:
        def probability(self, features, images):
            return torch.zeros(features.shape[0])

    def fit(sets, orbit_ids=None, image_ids=None):
        seen.append(set(orbit_ids))
        return Spy()

    cross_validate([data], fit, folds=2)
    groups = {o.id: data.groups[o.id] for o in data.orbits}
    for train in seen:
        held = {o.id for o in data.orbits} - {i for _, i in train}
        assert not {groups[i] for i in held} & {groups[i] for _, i in train}
    with pytest.raises(ValueError, match="folds"):
        cross_validate([data], fit, folds=1)


def test_orbit_window_is_recorded_named_and_read_as_the_metric_reads_it(labelled_set, tmp_path):
    """A calibrated judge with an orbit face window: its record and identity carry the window,
    the calibration's orbit verdict is judge_orbit's on the same frames, and a judge without a
    window keeps its weights' SHA-256 as its name."""
    from janus_lab.judge import ORBIT_WINDOW, judge_identity
    from janus_lab.judge_calibration import Finetuned, LabelledSet, orbit_face
    from janus_lab.janus import judge_orbit
    from janus_lab.model_files import sha256
    from janus_lab.orbits import orbit_azimuths

    set_folder, _ = labelled_set
    base = V8
    calibrate(base, [set_folder], str(tmp_path / "w"), method="finetune", folds=0, orbit_window_deg=20.0)
    windowed = Judge.load(str(tmp_path / "w"))
    assert windowed.record[ORBIT_WINDOW] == 20.0 and windowed.orbit_face_window_deg == 20.0
    assert Judge.load(base).orbit_face_window_deg == 0.0
    assert judge_identity(base) == sha256(os.path.join(base, "judge.safetensors"))
    weights = sha256(str(tmp_path / "w" / "judge.safetensors"))
    assert judge_identity(str(tmp_path / "w")) != weights
    data = LabelledSet(set_folder, windowed.net.base, "reference")
    verdict = Finetuned(windowed.net.face)
    for orbit in data.orbits:
        frames = judge_orbit(orbit.frames, orbit_azimuths(orbit.frames.shape[0]), 15.0, windowed)
        assert torch.equal(frames.front_only_visible, orbit_face(verdict, orbit, 20.0))
    with pytest.raises(ValueError, match="orbit_window_deg"):
        calibrate(base, [set_folder], str(tmp_path / "x"), orbit_window_deg=180.0)


def test_the_calibration_reads_orbits_through_the_window(labelled_set):
    """A verdict's one-frame face on every orbit: without a window a face run of one frame (10
    degrees) is dropped by the run rule, a window of 20 degrees spreads it under the threshold; a
    two-frame face is a face run without the window and none with it, in score and cross_validate."""
    from janus_lab.judge_calibration import LabelledSet, cross_validate, orbit_face, score

    set_folder, _ = labelled_set
    data = LabelledSet(set_folder, Judge.load(V8).net, "reference")

    class TwoFrames:
        def probability(self, features, images):
            p = torch.zeros(features.shape[0])
            p[:2] = 1.0  # azimuths 0 and 10
            return p

    orbit = data.orbits[0]
    assert orbit_face(TwoFrames(), orbit, 0.0)[:2].all() and not orbit_face(TwoFrames(), orbit, 20.0).any()
    plain, windowed = score([data], TwoFrames()), score([data], TwoFrames(), window_deg=20.0)
    truth = [o.labels["outcome"] for o in data.orbits]
    assert plain["outcome"] == [t == "one_face_front" for t in truth]
    assert windowed["outcome"] == [t == "no_face" for t in truth]
    fit = lambda sets, orbit_ids=None, image_ids=None: TwoFrames()  # noqa: E731
    assert cross_validate([data], fit, folds=2, window_deg=20.0)["pooled"]["outcome"] == 0.0
    assert cross_validate([data], fit, folds=2)["pooled"]["outcome"] == 2 / 3
