"""The guidance's numbers: every one must be finite, and a finite value far outside what any
published recipe uses is said once.

``check_finite_keys`` raises a ``ConfigError`` naming the key for a number key that is not a
finite number (``inf`` passes ``> 0`` and ``>= 0``, so without it ``guidance_scale: inf`` trained
on infinite losses, and ``clip_end: inf`` clipped nothing). ``range_warnings`` gives one line per
key whose value is finite but outside its sensible range (``SENSIBLE_RANGES``, with the reason).
The ranges are deliberately wide: only values no published recipe comes near are named.

=====================================  ==============  ==========================================
key                                    sensible range  why
=====================================  ==============  ==========================================
``guidance_scale``                     (0, 1000]       published SDS scales are 7.5 - 100
                                                       (DreamFusion 100, DeepFloyd IF 20); the
                                                       gradient grows linearly with s, so above
                                                       10x the largest the update is 10x any
                                                       recipe's (D-SDS clipping then clips
                                                       nearly all of it); from about 1e18 the
                                                       loss overflows float32 (inf)
``clip_start``, ``clip_end``,          >= 0.1          published thresholds are 0.5 - 8; the
``grad_clip`` (its smallest value)                     clipped values have elements of order 1
                                                       (eps ~ N(0, 1)), so below 0.1 nearly every
                                                       element is clipped (90% of a unit
                                                       normal's) and the update is the threshold
                                                       times the gradient's sign (0: no update)
``negative_prompt_weight``,            <= 10           published Perp-Neg weights are at most 2
``perp_neg_f_*`` (largest value for                    (threestudio's preset 1.967,
x in [0, 1]), ``overhead_negatives``                   stable-dreamfusion's 2); above 10 a
                                                       negative outweighs the positive prompt
                                                       ten times over
=====================================  ==============  ==========================================
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

from ..utils.errors import require_finite
from .sds import schedule_values
from .views import DecayWeight

#: kind -> (low, high, the range as said, why): a finite value outside [low, high] is said once.
SENSIBLE_RANGES: Dict[str, Tuple[float, float, str, str]] = {
    "guidance_scale": (0.0, 1000.0, "(0, 1000]", "published SDS scales are 7.5 - 100 (DreamFusion 100, DeepFloyd IF 20) and the "
                       "gradient grows linearly with the scale, so above 1000 every update is 10x any recipe's "
                       "(D-SDS clipping then clips nearly all of it); from about 1e18 the loss overflows float32"),
    "clip_threshold": (0.1, math.inf, ">= 0.1", "published thresholds are 0.5 - 8; the clipped values have elements of order 1 "
                       "(eps ~ N(0, 1)), so below 0.1 nearly every element is clipped and the update is the "
                       "threshold times the gradient's sign (0: no update at all)"),
    "negative_weight": (0.0, 10.0, "[0, 10]", "published Perp-Neg weights are at most 2 (threestudio's preset 1.967, "
                        "stable-dreamfusion's 2); above 10 a negative outweighs the positive prompt ten times over"),
}

#: keys that must be finite numbers when set (None: resolved elsewhere)
NUMBER_KEYS = ("guidance_scale", "trainer_max_steps", "negative_prompt_weight", "clip_start", "clip_end",
               "clip_start_step", "clip_end_step")
WEIGHT_FUNCTIONS = ("perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf")


def check_finite_keys(config: Any) -> None:
    """Every set number key is a finite number (a ConfigError naming the first that is not)."""
    for key in NUMBER_KEYS:
        value = getattr(config, key)
        if value is not None:
            require_finite(key, value)


def outside(key: str, value: float, kind: str, verb: str = "=") -> Optional[str]:
    """One line when ``value`` lies outside the sensible range of ``kind``, else None."""
    low, high, shown, reason = SENSIBLE_RANGES[kind]
    if low <= value <= high:
        return None
    return f"`{key}` {verb} {value:g}, outside its sensible range {shown}: {reason}"


def range_warnings(config: Any, guidance_scale: float, clip_kind: Optional[str]) -> Dict[str, str]:
    """{key: one line} for each key whose finite value lies outside its sensible range (module
    docstring). ``clip_kind``: the D-SDS schedule when clipping is on (``clip_end`` acts unless
    it is constant)."""
    found = {"guidance_scale": outside("guidance_scale", guidance_scale, "guidance_scale")}
    if clip_kind is not None:
        for key in ("clip_start",) if clip_kind == "constant" else ("clip_start", "clip_end"):
            if getattr(config, key) is not None:
                found[key] = outside(key, float(getattr(config, key)), "clip_threshold")
    if config.grad_clip is not None:
        found["grad_clip"] = outside("grad_clip", min(schedule_values(config.grad_clip)), "clip_threshold",
                                     "goes down to")
    found["negative_prompt_weight"] = outside("negative_prompt_weight", float(config.negative_prompt_weight),
                                              "negative_weight")
    for key in WEIGHT_FUNCTIONS:
        if getattr(config, key) is not None:
            peak = DecayWeight.from_config(key, getattr(config, key)).peak()
            found[key] = outside(key, peak, "negative_weight", "reaches")
    for view, weight in dict(config.overhead_negatives).items():
        key = f"overhead_negatives.{view}"
        found[key] = outside(key, float(weight), "negative_weight")
    return {key: line for key, line in found.items() if line}
