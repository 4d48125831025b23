"""The 3D experiment's tables: per variant and prompt group the Janus rate with its Wilson
interval and the means of the other metrics, and the rates of the four outcomes of an orbit
(``janus.OUTCOMES``, docs/preregistration.md, seventh entry, item 1); each variant paired against
the baseline (exact McNemar) with its registered reading; written as Markdown, CSV and JSON.
Runs judged before the outcomes existed have none: the outcome rates count the runs that have
them (``outcome_runs``)."""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

from antijanus.utils.cache import write_json

from ..janus import OUTCOMES
from ..stats import holm, mcnemar_exact, wilson_rate
from .variants import VSD_VARIANT_NAMES

RATES = ("janus", "face_in_back", "janus_two_fronts")  # yes/no per run
OUTCOME_RATES = tuple(f"outcome_{name}" for name in OUTCOMES)  # one of them 1 per run
OUTCOME_LABELS = {"outcome_janus": "Janus", "outcome_one_face_front": "one face, front",
                  "outcome_face_elsewhere": "face elsewhere", "outcome_no_face": "no face"}
PAIRED_KEYS = ("janus", "face_in_back", "outcome_janus", "outcome_one_face_front")
OUTCOME_GROUPS = ("all prompts", "with 'smiling'", "without 'smiling'")  # the outcome table's rows
METRICS = ("face_in_front", "face_scrambled", "view_accuracy", "a_jfd", "kind_accuracy", "coverage")
METRIC_LABELS = {"face_in_front": "face in front", "face_scrambled": "face on scrambled (control)",
                 "view_accuracy": "view accuracy", "a_jfd": "a_jfd", "kind_accuracy": "kind accuracy",
                 "coverage": "coverage"}
# the reading rule written down before the confirmatory runs (custom/janus_lab/docs/preregistration.md,
# first entry): a reduction counts as one only if the variant still draws the face where it
# belongs, at least this share of the baseline's mean face_in_front
READING_FACE_RATIO = 0.8
READING_ALPHA = 0.05  # family-wise, split over the variants compared with the baseline (Bonferroni)
EARLY_STEP = 120  # "steps 0-120" of the clipped fraction (eighth entry, item 2)
TEST_KEYS = ("outcome_janus", "outcome_one_face_front")  # the eighth entry's paired keys
CONFIRMATORY = ("perp-neg", "outcome_janus", "with 'smiling'")  # the eighth entry's one test, p < 0.05


def summarise(results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Janus rate with its 95 % Wilson interval (and its two parts), the four outcome rates with
    theirs (over the ``outcome_runs`` that have outcomes), mean +- std of the rest."""
    row: Dict[str, Any] = {"runs": len(results)}
    for key in RATES:
        row[key] = rate_cell([r["metrics"][key] for r in results])
    judged = [r["metrics"] for r in results if all(k in r["metrics"] for k in OUTCOME_RATES)]
    row["outcome_runs"] = len(judged)
    for key in OUTCOME_RATES:
        row[key] = rate_cell([m[key] for m in judged])
    for key in METRICS:
        values = [float(r["metrics"][key]) for r in results if not math.isnan(r["metrics"].get(key, math.nan))]
        mean = sum(values) / len(values) if values else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        row[key] = {"mean": mean, "std": std}
    row["train_s"] = sum(r.get("train_s", math.nan) for r in results) / max(1, len(results))
    row.update(clipping(results))
    return row


def clipping(results: Sequence[Mapping[str, Any]], early_step: int = EARLY_STEP) -> Dict[str, float]:
    """D-SDS's clipped fraction of the score, from each run's logged history: the mean over the run
    and over the steps <= ``early_step``, averaged over the runs (NaN where nothing was logged)."""
    whole, early = [], []
    for r in results:
        history = r.get("history", {})
        values, steps = history.get("dsds/clipped_fraction", []), history.get("step", [])
        if values:
            whole.append(sum(values) / len(values))
            first = [v for s, v in zip(steps, values) if s <= early_step]
            early.append(sum(first) / len(first) if first else math.nan)
    mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
    return {"clipped_fraction": mean(whole), "clipped_fraction_early": mean(early)}


def rate_cell(values: Sequence[float]) -> Dict[str, Any]:
    """The share of values >= 0.5 with its 95 % Wilson interval and count (NaN when empty)."""
    rate, (low, high) = wilson_rate(values)
    return {"rate": rate, "ci": [low, high], "count": int(sum(v >= 0.5 for v in values))}


def in_group(prompt: str, group: str) -> bool:
    """Whether ``prompt`` belongs to one of ``OUTCOME_GROUPS`` (with / without the front-only word)."""
    if group == "all prompts":
        return True
    return ("smiling" in prompt) == (group == "with 'smiling'")


def grouped(results: Sequence[Mapping[str, Any]], variants: Sequence[str], prompts: Sequence[str]
            ) -> Iterator[Tuple[str, str, List[Mapping[str, Any]]]]:
    """(variant, group, rows) for each variant: every prompt, then the pooled groups."""
    for variant in variants:
        mine = [r for r in results if r["variant"] == variant]
        groups = [(p, [r for r in mine if r["prompt"] == p]) for p in prompts]
        groups += [(g, [r for r in mine if in_group(r["prompt"], g)])
                   for g in ("all prompts", "without 'smiling'", "with 'smiling'")]
        for name, rows in groups:
            if rows:
                yield variant, name, rows


def format_rate(cell: Mapping[str, Any]) -> str:
    if math.isnan(cell["rate"]):
        return "-"
    low, high = cell["ci"]
    return f"{cell['rate']:.2f} [{low:.2f}, {high:.2f}] ({cell['count']})"


def format_mean(cell: Mapping[str, Any]) -> str:
    return "-" if math.isnan(cell["mean"]) else f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def paired_against_baseline(results: Sequence[Mapping[str, Any]], variants: Sequence[str],
                            keys: Sequence[str] = PAIRED_KEYS, reference: str = "baseline"
                            ) -> List[Dict[str, Any]]:
    """Each variant against ``reference`` on the runs both have (the same prompt and seed: the
    same scene initialisation and camera / noise draws): discordant counts and the exact McNemar
    p-value per key. A key only some of the pairs have (the outcomes, on runs judged before they
    existed) is tested on those (its ``pairs`` then says how many) and left out when none has it.
    Empty when the reference did not run."""
    by_run = {(r["variant"], r["prompt"], r["seed"]): r["metrics"] for r in results}
    if reference not in variants:
        return []
    rows = []
    for variant in variants:
        if variant == reference:
            continue
        pairs = [(by_run[(reference, p, s)], m) for (v, p, s), m in by_run.items()
                 if v == variant and (reference, p, s) in by_run]
        if not pairs:
            continue
        row: Dict[str, Any] = {"variant": variant, "pairs": len(pairs)}
        for key in keys:
            both = [(ref, m) for ref, m in pairs if key in ref and key in m]
            if not both:
                continue
            b = sum(1 for ref, m in both if ref[key] >= 0.5 and m[key] < 0.5)
            c = sum(1 for ref, m in both if ref[key] < 0.5 and m[key] >= 0.5)
            row[key] = {"b": b, "c": c, "p": mcnemar_exact(b, c)}
            if len(both) < len(pairs):
                row[key]["pairs"] = len(both)
        rows.append(row)
    return rows


def registered_reading(b: int, c: int, p: float, face_in_front: float, baseline_face_in_front: float,
                       comparisons: int, alpha: float = READING_ALPHA) -> str:
    """The registered reading of one variant's Janus verdicts paired against the baseline's (b: runs
    Janus only in the baseline, c: only in the variant; p: exact McNemar): significant only at
    p < alpha / comparisons; then fewer Janus runs with the face kept in front (>= 0.8 x the
    baseline's) is "fewer Janus", with fewer faces "fewer faces, not a cure"."""
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")
    if not p < alpha / comparisons:
        return "not established"
    if c > b:
        return "more Janus"
    if math.isnan(face_in_front) or math.isnan(baseline_face_in_front):
        return "fewer Janus (face in front not measured)"
    if face_in_front >= READING_FACE_RATIO * baseline_face_in_front:
        return "fewer Janus"
    return "fewer faces, not a cure"


def summary_lines(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The summary table: the pooled rows first, then each prompt group."""
    header = ["variant", "prompts", "runs", "Janus rate [95 % CI] (count)", "face in back", "two fronts",
              *(METRIC_LABELS[k] for k in METRICS)]
    ordered = [r for r in rows if r["group"] == "all prompts"] + [r for r in rows if r["group"] != "all prompts"]
    return markdown_table(header, [[r["variant"], r["group"], r["runs"], *(format_rate(r[k]) for k in RATES),
                                    *(format_mean(r[k]) for k in METRICS)] for r in ordered])


def outcome_lines(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The outcomes of the orbits (seventh entry, item 1): per variant, pooled and per prompt group
    with / without a front-only word, the four rates with their Wilson intervals."""
    intro = ("Outcomes of the orbits (docs/preregistration.md, seventh entry, item 1; exactly one per run; "
             "rate [95 % Wilson CI] (count) over the runs judged with outcomes):")
    header = ["variant", "prompts", "runs with outcomes", *(OUTCOME_LABELS[k] for k in OUTCOME_RATES)]
    ordered = [r for g in OUTCOME_GROUPS for r in rows if r["group"] == g]
    return ["", intro, ""] + markdown_table(header, [[r["variant"], r["group"], r["outcome_runs"],
                                                      *(format_rate(r[k]) for k in OUTCOME_RATES)] for r in ordered])


def paired_cell(row: Mapping[str, Any], key: str) -> List[str]:
    """``b / c`` (with ``of n`` pairs when not every pair has the key) and p, or dashes."""
    if key not in row:
        return ["-", "-"]
    cell = row[key]
    of = f" of {cell['pairs']}" if "pairs" in cell else ""
    return [f"{cell['b']} / {cell['c']}{of}", f"{cell['p']:.3f}"]


def paired_lines(paired: Sequence[Mapping[str, Any]]) -> List[str]:
    """The paired comparison with its reading rule stated above it."""
    intro = ("Paired against the baseline (the same prompt and seed; b: runs where only the baseline "
             "has it, c: only the variant; exact McNemar p; reading: Janus at "
             f"p < {READING_ALPHA} / {len(paired)} (Bonferroni), a reduction with face in front below "
             f"{READING_FACE_RATIO} x the baseline's is \"fewer faces, not a cure\"; the outcome columns, "
             "seventh entry item 1, have no registered reading here):")
    header = ["variant", "pairs", "Janus b / c", "Janus p", "face in back b / c", "face in back p", "reading",
              "outcome Janus b / c", "outcome Janus p", "one face, front b / c", "one face, front p"]
    cells = [[r["variant"], r["pairs"], f"{r['janus']['b']} / {r['janus']['c']}", f"{r['janus']['p']:.3f}",
              f"{r['face_in_back']['b']} / {r['face_in_back']['c']}", f"{r['face_in_back']['p']:.3f}", r["reading"],
              *paired_cell(r, "outcome_janus"), *paired_cell(r, "outcome_one_face_front")]
             for r in paired]
    return ["", intro, ""] + markdown_table(header, cells)


def add_readings(paired: List[Dict[str, Any]], rows: Sequence[Mapping[str, Any]]) -> None:
    """Each paired row's registered reading (face in front: the pooled rows' means)."""
    face = {r["variant"]: r["face_in_front"]["mean"] for r in rows if r["group"] == "all prompts"}
    for row in paired:
        row["reading"] = registered_reading(row["janus"]["b"], row["janus"]["c"], row["janus"]["p"],
                                            face[row["variant"]], face["baseline"], len(paired))


def reference_of(variant: str) -> str:
    """The variant each is paired against (eighth entry, item 5): ``vsd`` for the VSD variants."""
    return "vsd" if variant in VSD_VARIANT_NAMES else "baseline"


def outcome_tests(results: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> List[Dict[str, Any]]:
    """The eighth entry's paired tests: each variant against its reference (``reference_of``), per
    prompt group, on ``TEST_KEYS``, exact McNemar with Holm's adjustment over the variants per key and
    group, and the item-6 reading of the direction."""
    rows = []
    for group in OUTCOME_GROUPS:
        mine = [r for r in results if in_group(r["prompt"], group)]
        for variant in variants:
            reference = reference_of(variant)
            if variant == reference:
                continue
            for row in paired_against_baseline(mine, [reference, variant], TEST_KEYS, reference):
                rows.append({"group": group, "reference": reference, **row})
    for group in OUTCOME_GROUPS:
        for key in TEST_KEYS:
            family = [r for r in rows if r["group"] == group and key in r]
            for r, p in zip(family, holm([r[key]["p"] for r in family])):
                r[key]["p_holm"] = p
    for r in rows:
        r["reading"] = outcome_reading(r)
    return rows


def outcome_reading(row: Mapping[str, Any]) -> str:
    """Eighth entry, item 6 as its addendum reads (direction only): fewer Janus outcomes and more
    one-face-front ones than the reference is "reduces Janus"; fewer Janus without more front faces
    (e.g. faceless orbits instead) is "fewer faces, not a cure"."""
    if "outcome_janus" not in row or "outcome_one_face_front" not in row:
        return "-"
    janus, front = row["outcome_janus"], row["outcome_one_face_front"]
    if janus["b"] > janus["c"]:
        return "reduces Janus" if front["c"] > front["b"] else "fewer faces, not a cure"
    return "more Janus" if janus["c"] > janus["b"] else "no change in Janus"


def outcome_test_lines(tests: Sequence[Mapping[str, Any]]) -> List[str]:
    """The eighth entry's paired outcome tests and its one confirmatory test."""
    intro = ("Paired outcomes (docs/preregistration.md, eighth entry, items 5-6; reference: baseline, vsd for the "
             "VSD variants; b: runs with it only in the reference, c: only in the variant; exact McNemar p, "
             "Holm-adjusted over the variants per key and group; every row but the confirmatory one is "
             "exploratory, read as direction only):")
    header = ["variant", "reference", "prompts", "pairs", "Janus b / c", "p", "p (Holm)",
              "one face, front b / c", "p", "p (Holm)", "reading"]
    cells = []
    for r in tests:
        cell = []
        for key in TEST_KEYS:
            c = r.get(key)
            of = f" of {c['pairs']}" if c and "pairs" in c else ""  # fewer pairs have this key
            cell += ([f"{c['b']} / {c['c']}{of}", f"{c['p']:.3f}", f"{c['p_holm']:.3f}"] if c else ["-", "-", "-"])
        cells.append([r["variant"], r["reference"], r["group"], r["pairs"], *cell, r["reading"]])
    lines = ["", intro, ""] + markdown_table(header, cells)
    variant, key, group = CONFIRMATORY
    found = [r for r in tests if r["variant"] == variant and r["group"] == group and key in r]
    if found:
        c = found[0][key]
        verdict = "significant" if c["p"] < 0.05 else "not significant"
        lines += ["", f"Confirmatory test (eighth entry, item 5): {variant} against {found[0]['reference']} on {key}, prompts "
                      f"{group}: b / c = {c['b']} / {c['c']} of {found[0]['pairs']}, p = {c['p']:.3f}: {verdict} at "
                      f"0.05; reading: {found[0]['reading']}."]
    return lines


def clipping_lines(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """D-SDS's clipped fraction per variant (eighth entry, item 2), for variants that logged one."""
    pooled = [r for r in rows if r["group"] == "all prompts" and not math.isnan(r.get("clipped_fraction", math.nan))]
    if not pooled:
        return []
    intro = f"D-SDS clipped fraction of the score (mean over each run, and over its steps 0-{EARLY_STEP}; mean of runs):"
    return ["", intro, ""] + markdown_table(["variant", "runs", "clipped fraction", f"steps 0-{EARLY_STEP}"],
                                             [[r["variant"], r["runs"], f"{r['clipped_fraction']:.3f}",
                                               f"{r['clipped_fraction_early']:.3f}"] for r in pooled])


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "prompts", "runs", "janus", "janus_low", "janus_high", "face_in_back",
                         "janus_two_fronts", *[f"{k}_mean" for k in METRICS], *[f"{k}_std" for k in METRICS],
                         "train_s", "outcome_runs",
                         *[f"{k}{end}" for k in OUTCOME_RATES for end in ("", "_low", "_high")]])
        for row in rows:
            writer.writerow([row["variant"], row["group"], row["runs"], row["janus"]["rate"], *row["janus"]["ci"],
                             row["face_in_back"]["rate"], row["janus_two_fronts"]["rate"],
                             *[row[k]["mean"] for k in METRICS], *[row[k]["std"] for k in METRICS], row["train_s"],
                             row["outcome_runs"], *[v for k in OUTCOME_RATES for v in (row[k]["rate"], *row[k]["ci"])]])


def write_tables(results: Sequence[Mapping[str, Any]], out: str, variants: Sequence[str], prompts: Sequence[str]
                 ) -> Dict[str, str]:
    """table.md, table.csv and table.json in ``out``."""
    rows = [{"variant": v, "group": g, **summarise(rs)} for v, g, rs in grouped(results, variants, prompts)]
    lines = summary_lines(rows) + outcome_lines(rows)
    paired = paired_against_baseline(results, variants)
    if paired:
        add_readings(paired, rows)
        lines += paired_lines(paired)
    tests = outcome_tests(results, variants)
    if tests:
        lines += outcome_test_lines(tests)
    lines += clipping_lines(rows)
    os.makedirs(out, exist_ok=True)
    md, csv_path, js = (os.path.join(out, name) for name in ("table.md", "table.csv", "table.json"))
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    write_csv(csv_path, rows)
    write_json(js, {"rows": rows, "paired_against_baseline": paired, "outcome_tests": tests})
    return {"markdown": md, "csv": csv_path, "json": js}
