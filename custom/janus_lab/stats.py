"""The lab's statistics: proportions with their Wilson intervals, the exact McNemar test for
paired yes/no outcomes (one implementation each, used by every table of the lab)."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple


def wilson(successes: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def wilson_rate(values: Sequence[float]) -> Tuple[float, Tuple[float, float]]:
    """Share of runs with value 1 (e.g. ``janus``) and its 95 % Wilson interval."""
    hits, n = int(sum(1 for v in values if v >= 0.5)), len(values)
    return (hits / n if n else math.nan), wilson(hits, n)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for paired yes/no outcomes: ``only_first`` pairs where only
    the first is yes, ``only_second`` where only the second is; under the null each discordant pair
    goes either way with probability 1/2 (a binomial test on the discordant pairs)."""
    if only_first < 0 or only_second < 0:
        raise ValueError("counts of discordant pairs must be >= 0")
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2 ** n  # exact ints: no overflow
    return min(1.0, 2.0 * tail)


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment of ``pvalues`` (family-wise error), in their order; NaN stays NaN
    and does not count in the family."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted
