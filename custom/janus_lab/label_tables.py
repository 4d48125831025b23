"""A 3D table's outcomes read by the labellers instead of the judge: when the orbits of labelled
sets are a table's runs (each item's manifest names its variant, prompt and seed), their
reference outcomes give the same outcome rates per variant and prompt group and the same paired
tests (``experiment3d.tables``: each variant against its reference, exact McNemar, Holm) with
people in the judge's place. Orbits the reference leaves unclear have no outcome: they count in
no rate and in no pair."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

from .experiment3d.tables import (OUTCOME_GROUPS, OUTCOME_RATES, in_group, outcome_lines, outcome_test_lines,
                                  outcome_tests, rate_cell)
from .experiment3d.variants import ALL_VARIANT_NAMES
from .janus import OUTCOMES
from .label_agreement import UNCLEAR
from .label_sets import read_manifest


def labelled_results(set_folders: Sequence[str]) -> List[Dict[str, Any]]:
    """One result per labelled orbit of the sets: variant, prompt, seed and, for a decided outcome,
    the one-hot ``outcome_<name>`` metrics of ``experiment3d.tables``."""
    found: Dict[tuple, Dict[str, Any]] = {}
    for folder in set_folders:
        with open(os.path.join(folder, "reference.json")) as f:
            ref = json.load(f)["labels"]
        for item in read_manifest(folder):
            if item.kind != "orbit" or item.id not in ref:
                continue
            key = (item.meta["variant"], item.meta["prompt"], int(item.meta["seed"]))
            if key in found:
                raise ValueError(f"{key} is labelled in two sets ({folder} and another): one run, one reference")
            outcome = ref[item.id]["outcome"]
            metrics = {} if outcome == UNCLEAR else {f"outcome_{name}": float(name == outcome) for name in OUTCOMES}
            found[key] = {"variant": key[0], "prompt": key[1], "seed": key[2], "metrics": metrics}
    return list(found.values())


def outcome_rows(results: Sequence[Dict[str, Any]], variants: Sequence[str]) -> List[Dict[str, Any]]:
    """Per variant and prompt group: the runs with an outcome and the four outcome rates."""
    rows = []
    for variant in variants:
        for group in OUTCOME_GROUPS:
            mine = [r["metrics"] for r in results if r["variant"] == variant and in_group(r["prompt"], group)]
            decided = [m for m in mine if m]
            rows.append({"variant": variant, "group": group, "outcome_runs": len(decided),
                         **{key: rate_cell([m[key] for m in decided]) for key in OUTCOME_RATES}})
    return rows


def people_table(set_folders: Sequence[str]) -> str:
    """The outcome table and the paired outcome tests from the sets' reference labels (Markdown)."""
    results = labelled_results(set_folders)
    present = {r["variant"] for r in results}
    variants = [v for v in ALL_VARIANT_NAMES if v in present] + sorted(present - set(ALL_VARIANT_NAMES))
    seeds = sorted({r["seed"] for r in results})
    lines = [f"## The outcomes read by the labellers ({', '.join(set_folders)}; seeds {seeds})", "",
             f"{len(results)} labelled orbits, {sum(not r['metrics'] for r in results)} with an unclear outcome "
             "(in no rate and no pair)."]
    lines += outcome_lines(outcome_rows(results, variants)) + outcome_test_lines(outcome_tests(results, variants))
    return "\n".join(lines)
