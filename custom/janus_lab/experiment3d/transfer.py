"""Whether the fast path's verdicts transfer to threestudio's launcher (preregistration.md, eleventh
entry, item 3): each launcher run beside its fast-path counterpart (the same variant, prompt and
seed; the paths do not share an initialisation), the share of equal outcomes per variant, and
whether each variant's paired reading against its reference (``tables.outcome_tests``) points the
same way on both paths, per prompt group, on the (prompt, seed) pairs both paths have."""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Mapping, Sequence

from ..janus import outcome_name
from .tables import OUTCOME_GROUPS, markdown_table, outcome_tests

Run = Mapping[str, Any]


def _by_run(results: Sequence[Run]) -> Dict[tuple, Run]:
    return {(r["variant"], r["prompt"], r["seed"]): r for r in results if "outcome" in r["metrics"]}


def transfer(launcher: Sequence[Run], fast: Sequence[Run], variants: Sequence[str]) -> Dict[str, Any]:
    """Per variant: runs on both paths, equal outcomes, the (fast -> launcher) outcome counts; per
    variant and prompt group: the paired reading on each path over the common runs."""
    ours, theirs = _by_run(launcher), _by_run(fast)
    common = sorted(set(ours) & set(theirs))
    rows = []
    for variant in variants:
        keys = [k for k in common if k[0] == variant]
        if not keys:
            continue
        pairs = Counter((outcome_name(theirs[k]["metrics"]), outcome_name(ours[k]["metrics"])) for k in keys)
        same = sum(n for (a, b), n in pairs.items() if a == b)
        rows.append({"variant": variant, "runs": len(keys), "same": same, "share": same / len(keys),
                     "pairs": {f"{a} -> {b}": n for (a, b), n in sorted(pairs.items())}})
    readings = {}
    for name, results in (("fast", [theirs[k] for k in common]), ("launcher", [ours[k] for k in common])):
        for t in outcome_tests(results, variants):
            readings.setdefault((t["variant"], t["group"]), {})[name] = t["reading"]
    directions = [{"variant": v, "group": g, **r, "same": r.get("fast") == r.get("launcher")}
                  for g in OUTCOME_GROUPS for (v, gg), r in readings.items() if gg == g]
    return {"runs": rows, "directions": directions, "common": len(common)}


def transfer_lines(report: Mapping[str, Any]) -> List[str]:
    lines = [f"Transfer, fast path -> launcher (eleventh entry, item 3; {report['common']} runs on both paths, "
             "same variant, prompt and seed):", ""]
    lines += markdown_table(["variant", "runs", "same outcome", "share", "fast -> launcher"],
                            [[r["variant"], r["runs"], r["same"], f"{r['share']:.2f}",
                              ", ".join(f"{k} {n}" for k, n in r["pairs"].items())] for r in report["runs"]])
    if report["directions"]:
        lines += ["", "Paired reading against the reference on each path (the common runs):", ""]
        lines += markdown_table(["variant", "prompts", "fast path", "launcher", "same direction"],
                                [[d["variant"], d["group"], d.get("fast", "-"), d.get("launcher", "-"),
                                  "yes" if d["same"] else "no"] for d in report["directions"]])
    return lines
