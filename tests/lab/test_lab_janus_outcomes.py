"""The outcome of an orbit (docs/preregistration.md, seventh entry, item 1; janus_lab.janus):
``orbit_outcome`` on constructed per-frame face verdicts, the outcome columns of
``orbit_metrics`` beside the old ones, the committed judge on the world's constructed orbits,
and the outcome rates and paired tests of the 3D experiment's tables."""

import csv
import json
import math
import random

import pytest
import torch
from helpers import one_thread  # noqa: F401 - the fixture

from janus_lab.experiment3d.runs import progress_line
from janus_lab.experiment3d.tables import OUTCOME_RATES, paired_against_baseline, summarise, write_tables
from janus_lab.janus import OUTCOMES, judge_orbit, orbit_metrics, orbit_outcome, outcome_name
from janus_lab.judge import Judge
from janus_lab.model_files import model_path
from janus_lab.orbits import orbit_azimuths, render_creature_orbit
from janus_lab.stats import wilson
from janus_lab.world import KINDS, Creature
from lab_fakes import ScriptedJudge

pytestmark = pytest.mark.usefixtures("one_thread")


def wrapped(a):
    return (a + 180.0) % 360.0 - 180.0


def outcome(n, face):
    """The outcome of an n-azimuth orbit (0, 360 / n, ...) whose face verdict at wrapped azimuth a
    is ``face(a)``, from (azimuth, verdict) pairs."""
    return orbit_outcome([(a, bool(face(round(wrapped(a), 3)))) for a in orbit_azimuths(n).tolist()])


# ----------------------------------------------------------------------------- constructed verdicts


def test_one_face_in_front_also_across_azimuth_zero_and_into_a_side():
    assert outcome(36, lambda a: abs(a) < 45) == "one_face_front"
    # frames 330 ... 30: the run crosses azimuth 0, i.e. the seam of 0 ... 350 (one run, not two)
    assert outcome(36, lambda a: -30 <= a <= 30) == "one_face_front"
    assert outcome(36, lambda a: -20 <= a <= 100) == "one_face_front"  # from the front into a side
    assert outcome(36, lambda a: 40 <= a <= 120) == "one_face_front"  # mostly on a side, 1 front frame
    assert outcome(36, lambda a: abs(a) < 45 and a != 0) == "one_face_front"  # a 1-frame hole is closed


def test_a_one_frame_blip_is_dropped_on_a_36_view_orbit():
    assert outcome(36, lambda a: abs(a) < 45 or a == 90) == "one_face_front"
    assert outcome(36, lambda a: abs(a) < 45 or a == -180) == "one_face_front"
    assert outcome(36, lambda a: a == 90) == "no_face"
    assert outcome(36, lambda a: a == 0) == "no_face"
    assert outcome(36, lambda a: a in (0, 10)) == "one_face_front"  # two frames (20 degrees) count


def test_two_faces_or_a_face_at_the_back_are_janus():
    assert outcome(36, lambda a: abs(a) < 45 or abs(a) > 160) == "janus"  # two fronts
    assert outcome(36, lambda a: abs(a) > 160) == "janus"  # turned around: the only face at the back
    assert outcome(36, lambda a: 80 <= abs(a) <= 100) == "janus"  # two faces, both on a side
    assert outcome(36, lambda a: abs(a) < 45 or a in (120, 130)) == "janus"  # a second face of 2 frames
    assert outcome(36, lambda a: True) == "janus"  # a face everywhere, also at the back
    assert outcome(36, lambda a: 120 <= a <= 150) == "janus"  # 2 back frames (140, 150): face_in_back


def test_one_face_only_on_a_side_is_elsewhere():
    assert outcome(36, lambda a: 80 <= a <= 100) == "face_elsewhere"
    assert outcome(36, lambda a: -100 <= a <= -80) == "face_elsewhere"
    # reaching the back region by one frame (140) is no run in the back (face_in_back's rule)
    assert outcome(36, lambda a: 110 <= a <= 140) == "face_elsewhere"
    assert outcome(36, lambda a: 50 <= a <= 130) == "face_elsewhere"  # the side region alone


def test_no_face_at_all():
    assert outcome(36, lambda a: False) == "no_face"
    assert outcome(4, lambda a: False) == "no_face"


def test_coarse_orbits_where_one_frame_counts():
    # the labellers' strip: 12 frames 30 degrees apart
    assert outcome(12, lambda a: a == 0) == "one_face_front"
    assert outcome(12, lambda a: a == 30) == "one_face_front"
    assert outcome(12, lambda a: a in (0, -180)) == "janus"  # 180 wraps to -180
    assert outcome(12, lambda a: a == 90) == "face_elsewhere"
    assert outcome(12, lambda a: a == 150) == "janus"  # 150 is in the back region
    assert outcome(12, lambda a: abs(a) in (0, 30, 60)) == "one_face_front"
    # 8 azimuths: one frame spans 45 degrees; 45 is no front and 135 no back (strict bounds)
    assert outcome(8, lambda a: a == 0) == "one_face_front"
    assert outcome(8, lambda a: a == 45) == "face_elsewhere"
    assert outcome(8, lambda a: a == 135) == "face_elsewhere"
    assert outcome(8, lambda a: a in (0, 90)) == "janus"  # a 45-degree gap separates
    assert outcome(4, lambda a: a == 90) == "face_elsewhere"
    assert outcome(4, lambda a: a == -180) == "janus"


def test_orbit_outcome_takes_pairs_or_tensors_in_any_order():
    az = orbit_azimuths(36)
    faces = (wrapped(az).abs() < 45)
    assert orbit_outcome(az, faces) == orbit_outcome(az.tolist(), faces.tolist()) == "one_face_front"
    pairs = list(zip(az.tolist(), faces.tolist()))
    random.Random(0).shuffle(pairs)
    assert orbit_outcome(pairs) == "one_face_front"
    assert orbit_outcome([(wrapped(a), f) for a, f in pairs]) == "one_face_front"  # azimuths in [-180, 180)
    assert orbit_outcome(az, faces.int()) == "one_face_front"  # 0 / 1 are verdicts too
    # threestudio's repeated end frame (360 after 0) counts once, as its first frame
    end = orbit_azimuths(37, duplicate_end=True)
    assert orbit_outcome(end, wrapped(end).abs() < 45) == "one_face_front"
    assert orbit_outcome(list(zip(end.tolist(), [False] * 36 + [True]))) == "no_face"


def test_orbit_outcome_refuses_unclear_or_mismatched_input():
    az = orbit_azimuths(12).tolist()
    with pytest.raises(ValueError, match="unclear"):
        orbit_outcome([(a, None if a == 0 else False) for a in az])
    with pytest.raises(ValueError, match="unclear"):
        orbit_outcome([(a, "yes") for a in az])
    with pytest.raises(ValueError, match="face verdicts"):
        orbit_outcome(az, [True] * 11)
    with pytest.raises(ValueError, match="uniformly spaced"):
        orbit_outcome([(0.0, True), (30.0, False), (120.0, False), (150.0, False)])


# ----------------------------------------------------------------------------- the metrics of an orbit


def scripted(face, n=36):
    """orbit_metrics with faithful view verdicts and the face where ``face(wrapped azimuth)``."""
    az = orbit_azimuths(n)
    a = wrapped(az).abs().tolist()
    views = ["front" if x < 45 else "back" if x > 135 else "side" for x in a]
    faces = [bool(face(round(x, 3))) for x in wrapped(az).tolist()]
    return orbit_metrics(torch.rand(n, 3, 32, 32), az, 15.0, ScriptedJudge(views, faces)), orbit_outcome(az, faces)


@pytest.mark.parametrize("face, expected, segments, old_janus", [
    (lambda a: abs(a) < 45, "one_face_front", 1, 0.0),
    (lambda a: abs(a) < 45 or abs(a) > 160, "janus", 2, 1.0),
    (lambda a: 80 <= abs(a) <= 100, "janus", 2, 0.0),  # two side faces: the old verdict missed them
    (lambda a: 80 <= a <= 100, "face_elsewhere", 1, 0.0),
    (lambda a: False, "no_face", 0, 0.0),
])
def test_outcome_columns_are_one_hot_beside_the_old_columns(face, expected, segments, old_janus):
    m, pure = scripted(face)
    assert outcome_name(m) == pure == expected and m["outcome"] == float(OUTCOMES.index(expected))
    assert [m[f"outcome_{name}"] for name in OUTCOMES] == [float(name == expected) for name in OUTCOMES]
    assert m["face_segments"] == float(segments)
    assert m["janus"] == old_janus and m["front_segments"] == 1.0  # the old columns, unchanged
    assert m["face_in_back"] == float(expected == "janus" and old_janus == 1.0)


def test_progress_line_names_the_outcome():
    m, _ = scripted(lambda a: abs(a) < 45)
    assert "outcome one_face_front" in progress_line({"metrics": m}, verdicts=True)
    assert "outcome" not in progress_line({"metrics": {"janus": 0.0, "view_accuracy": 1.0}}, verdicts=True)


# ----------------------------------------------------------------------------- the committed judge


@pytest.fixture(scope="module")
def judge():
    return Judge.load(model_path("judge"))


@pytest.mark.parametrize("kind", KINDS)
def test_constructed_world_orbits_have_their_outcome(judge, kind):
    """Ground truth: one face in front; two-faced and turned around: Janus; without face and smile:
    no face (36 azimuths, the world's cameras, plain and with every attribute)."""
    az = orbit_azimuths(36)
    for creature in (Creature(kind), Creature(kind, smiling=True, striped=True, hat=True)):
        orbits = {"one_face_front": render_creature_orbit(creature, az),
                  "janus": [render_creature_orbit(creature, az, two_faced=True),
                            render_creature_orbit(creature, az + 180.0)],
                  "no_face": render_creature_orbit(Creature(kind, face=False, striped=creature.striped,
                                                            hat=creature.hat), az)}
        for expected, frames in orbits.items():
            for f in (frames if isinstance(frames, list) else [frames]):
                m = orbit_metrics(f, az, 15.0, judge, kind=kind)
                assert outcome_name(m) == expected, (creature, expected, m)
                verdicts = judge_orbit(f, az, 15.0, judge).front_only_visible  # the same rule from the frames
                assert orbit_outcome(az, verdicts) == expected


# ----------------------------------------------------------------------------- the tables


def run(variant, seed, name, prompt="a bear", outcomes=True):
    metrics = {"janus": float(name == "janus"), "face_in_back": float(name == "janus"), "janus_two_fronts": 0.0,
               "face_in_front": 1.0, "face_scrambled": 0.0, "view_accuracy": 1.0, "a_jfd": 0.1,
               "kind_accuracy": 1.0, "coverage": 0.1}
    if outcomes:
        metrics.update({"outcome": float(OUTCOMES.index(name)),
                        **{f"outcome_{o}": float(o == name) for o in OUTCOMES}})
    return {"variant": variant, "prompt": prompt, "seed": seed, "metrics": metrics, "train_s": 1.0}


def test_summary_gives_the_four_outcome_rates_with_wilson_intervals():
    results = [run("baseline", s, name) for s, name in enumerate(["janus"] * 3 + ["one_face_front"] * 5
                                                               + ["no_face"] * 2)]
    row = summarise(results + [run("baseline", 10, "janus", outcomes=False)])  # judged before outcomes
    assert row["runs"] == 11 and row["outcome_runs"] == 10 and row["janus"]["count"] == 4
    assert row["outcome_janus"] == {"rate": 0.3, "ci": list(wilson(3, 10)), "count": 3}
    assert row["outcome_one_face_front"]["count"] == 5 and row["outcome_face_elsewhere"]["rate"] == 0.0
    assert sum(row[k]["count"] for k in OUTCOME_RATES) == 10
    old = summarise([run("baseline", 0, "janus", outcomes=False)])
    assert old["outcome_runs"] == 0 and math.isnan(old["outcome_janus"]["rate"])


def test_paired_tests_on_the_outcomes_against_the_baseline():
    results = [run("baseline", s, "janus") for s in range(6)] + [run("perp-neg", s, "one_face_front") for s in range(6)]
    results += [run("dnp", s, "no_face") for s in range(6)]
    rows = {r["variant"]: r for r in paired_against_baseline(results, ["baseline", "perp-neg", "dnp"])}
    assert rows["perp-neg"]["outcome_janus"] == {"b": 6, "c": 0, "p": pytest.approx(2 / 64)}
    assert rows["perp-neg"]["outcome_one_face_front"] == {"b": 0, "c": 6, "p": pytest.approx(2 / 64)}
    assert rows["dnp"]["outcome_janus"]["b"] == 6 and rows["dnp"]["outcome_one_face_front"]["c"] == 0
    # pairs judged before the outcomes existed: tested on those that have them, left out when none
    mixed = results[:6] + [run("perp-neg", s, "one_face_front", outcomes=s < 2) for s in range(6)]
    row = paired_against_baseline(mixed, ["baseline", "perp-neg"])[0]
    assert row["pairs"] == 6 and row["outcome_janus"] == {"b": 2, "c": 0, "p": 0.5, "pairs": 2}
    old = [run(v, 0, "janus", outcomes=False) for v in ("baseline", "perp-neg")]
    assert "outcome_janus" not in paired_against_baseline(old, ["baseline", "perp-neg"])[0]


def test_tables_report_outcomes_pooled_and_per_prompt_group(tmp_path):
    results = []
    for s in range(4):
        results += [run("baseline", s, "janus", "a smiling bear"), run("baseline", s, "no_face", "a bear"),
                    run("perp-neg", s, "one_face_front", "a smiling bear"),
                    run("perp-neg", s, "face_elsewhere", "a bear")]
    paths = write_tables(results, str(tmp_path), ["baseline", "perp-neg"], ["a bear", "a smiling bear"])
    with open(paths["markdown"]) as f:
        table = f.read()
    assert "| variant | prompts | runs with outcomes | Janus | one face, front | face elsewhere | no face |" in table
    assert "| baseline | all prompts | 8 | 0.50 [0.22, 0.78] (4) | 0.00 [0.00, 0.32] (0) |" in table
    assert "| baseline | with 'smiling' | 4 | 1.00 [0.51, 1.00] (4) |" in table
    assert "| perp-neg | without 'smiling' | 4 | 0.00 [0.00, 0.49] (0) | 0.00 [0.00, 0.49] (0) | 1.00" in table
    assert "| Janus b / c | Janus p |" in table and "| outcome Janus b / c | outcome Janus p |" in table
    assert "| 4 / 0 | 0.125 | 0 / 4 | 0.125 |" in table  # outcome Janus, then one face front
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    pooled = next(r for r in rows if r["variant"] == "perp-neg" and r["prompts"] == "all prompts")
    assert float(pooled["outcome_one_face_front"]) == 0.5 and pooled["outcome_runs"] == "8"
    assert float(pooled["janus_low"]) == 0.0 and "outcome_no_face_high" in pooled
    with open(paths["json"]) as f:
        data = json.load(f)
    assert data["paired_against_baseline"][0]["outcome_one_face_front"]["c"] == 4


def test_eighth_entry_tests_pair_vsd_with_vsd_per_group_with_holm_and_clipping(tmp_path):
    from janus_lab.experiment3d.tables import outcome_tests
    from janus_lab.stats import holm

    results = []
    for s in range(6):
        results += [run("baseline", s, "janus", "a smiling bear"), run("baseline", s, "no_face", "a bear"),
                    run("perp-neg", s, "one_face_front", "a smiling bear"), run("perp-neg", s, "no_face", "a bear"),
                    run("dsds-clip", s, "no_face", "a smiling bear"), run("dsds-clip", s, "no_face", "a bear"),
                    run("vsd", s, "one_face_front", "a smiling bear"), run("vsd", s, "no_face", "a bear"),
                    run("vsd-perp-neg", s, "janus", "a smiling bear"), run("vsd-perp-neg", s, "no_face", "a bear")]
    for r in results:
        if r["variant"] == "dsds-clip":
            r["history"] = {"step": [0, 60, 120, 180], "dsds/clipped_fraction": [0.6, 0.3, 0.0, 0.1]}
    tests = outcome_tests(results, ["baseline", "perp-neg", "dsds-clip", "vsd", "vsd-perp-neg"])
    by = {(t["variant"], t["group"]): t for t in tests}
    assert {t["reference"] for t in tests if t["variant"].startswith("vsd")} == {"vsd"}
    assert ("baseline", "all prompts") not in by and ("vsd", "all prompts") not in by
    smiling = by[("perp-neg", "with 'smiling'")]
    assert smiling["pairs"] == 6 and smiling["outcome_janus"]["b"] == 6 and smiling["outcome_janus"]["c"] == 0
    assert smiling["reading"] == "reduces Janus"
    assert by[("dsds-clip", "with 'smiling'")]["reading"] == "fewer faces, not a cure"
    assert by[("vsd-perp-neg", "with 'smiling'")]["reading"] == "more Janus"
    assert by[("perp-neg", "without 'smiling'")]["reading"] == "no change in Janus"
    family = [by[(v, "with 'smiling'")]["outcome_janus"] for v in ("perp-neg", "dsds-clip", "vsd-perp-neg")]
    assert [c["p_holm"] for c in family] == pytest.approx(holm([c["p"] for c in family]))
    assert family[0]["p_holm"] == pytest.approx(3 * 2 / 64)
    paths = write_tables(results, str(tmp_path), ["baseline", "perp-neg", "dsds-clip", "vsd", "vsd-perp-neg"],
                         ["a bear", "a smiling bear"])
    with open(paths["markdown"]) as f:
        table = f.read()
    assert "Confirmatory test (eighth entry, item 5): perp-neg against baseline on outcome_janus, prompts " \
           "with 'smiling': b / c = 6 / 0 of 6, p = 0.031: significant at 0.05; reading: reduces Janus." in table
    assert "| dsds-clip | 12 | 0.250 | 0.300 |" in table  # run mean 0.25, steps 0-120 mean 0.3
    assert "| vsd-perp-neg | vsd | with 'smiling' | 6 | 0 / 6 |" in table


def test_transfer_pairs_each_launcher_run_with_its_fast_counterpart():
    from janus_lab.experiment3d.transfer import transfer, transfer_lines

    fast, launcher = [], []
    for s in range(3):
        fast += [run("baseline", s, "janus", "a smiling bear"), run("perp-neg", s, "one_face_front", "a smiling bear")]
        launcher += [run("baseline", s, "janus", "a smiling bear"),
                     run("perp-neg", s, "one_face_front" if s < 2 else "no_face", "a smiling bear")]
    fast.append(run("baseline", 9, "janus", "a bear"))  # no launcher counterpart: left out
    launcher.append(run("perp-neg", 5, "janus", "a bear", outcomes=False))  # judged before outcomes: left out
    report = transfer(launcher, fast, ["baseline", "perp-neg"])
    rows = {r["variant"]: r for r in report["runs"]}
    assert report["common"] == 6
    assert rows["baseline"]["same"] == 3 and rows["baseline"]["share"] == 1.0
    assert rows["perp-neg"]["same"] == 2 and rows["perp-neg"]["pairs"] == {"one_face_front -> no_face": 1,
                                                                           "one_face_front -> one_face_front": 2}
    smiling = next(d for d in report["directions"] if d["variant"] == "perp-neg" and d["group"] == "with 'smiling'")
    assert smiling["fast"] == "reduces Janus" and smiling["launcher"] == "reduces Janus" and smiling["same"]
    text = "\n".join(transfer_lines(report))
    assert "| perp-neg | 3 | 2 | 0.67 | one_face_front -> no_face 1, one_face_front -> one_face_front 2 |" in text


def test_holm_steps_down_with_a_running_maximum_and_leaves_nan_out():
    from janus_lab.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0]) and holm([]) == []  # capped at 1


def test_window_mean_reads_each_frame_with_its_neighbours_on_the_circle():
    from janus_lab.janus import window_mean

    az = wrapped(orbit_azimuths(36))
    p = torch.zeros(36, 1)
    p[0] = 1.0  # a one-frame spike at azimuth 0
    spread = window_mean(p, az, 20.0)[:, 0]
    near = [i for i in range(36) if min(abs(float(az[i])), 360 - abs(float(az[i]))) <= 20.0]
    assert sorted(near) == [0, 1, 2, 34, 35]  # across the seam
    assert torch.allclose(spread[near], torch.full((5,), 0.2)) and float(spread.sum()) == pytest.approx(1.0)
    assert torch.equal(window_mean(p, az, 0.0), p)
    counted = torch.ones(36, dtype=torch.bool)
    counted[1] = False  # a repeated frame is left out of its neighbours' means
    assert float(window_mean(torch.ones(36, 1), az, 20.0, counted)[0]) == 1.0
    assert float(window_mean(p, az, 20.0, counted)[2]) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="window"):
        window_mean(p, az, float("nan"))


def test_a_windowed_judge_fills_a_short_dip_and_drops_a_lone_frame():
    """Judge v13's reading (thirteenth entry): a front face split by a 20-degree dip is one face;
    a two-frame face blip on a faceless orbit is no face."""
    az = orbit_azimuths(36)
    a = wrapped(az).tolist()
    views = ["front" if abs(x) < 45 else "back" if abs(x) > 135 else "side" for x in a]
    dip = [abs(x) <= 50 and not 10 <= x <= 20 for x in a]
    blip = [0 <= x <= 10 for x in a]
    for faces, plain, windowed in ((dip, "janus", "one_face_front"), (blip, "one_face_front", "no_face")):
        judge = ScriptedJudge(views, faces)
        assert outcome_name(orbit_metrics(torch.rand(36, 3, 32, 32), az, 15.0, judge)) == plain
        judge.orbit_face_window_deg = 20.0
        assert outcome_name(orbit_metrics(torch.rand(36, 3, 32, 32), az, 15.0, judge)) == windowed


def test_grid_rows_are_labelled_with_the_outcome_the_tables_report():
    """A grid row shows the orbit's outcome (not the old single Janus verdict, which can disagree:
    one front face plus a mis-judged front elsewhere); runs judged before outcomes keep the old one."""
    from janus_lab.experiment3d.grids import row_verdict

    assert row_verdict({"janus": 1.0, "outcome": float(OUTCOMES.index("one_face_front"))}) == "one_face_front"
    assert row_verdict({"janus": 0.0, "outcome": float(OUTCOMES.index("janus"))}) == "janus"
    assert row_verdict({"janus": 1.0}) == "JANUS" and row_verdict({"janus": 0.0}) == "ok"
