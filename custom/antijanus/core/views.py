"""View regions, the Perp-Neg interpolation ratio r and the negative-weight functions.

Azimuth is in degrees, 0 = front, +-180 = back (threestudio's convention); elevation in degrees.

Perp-Neg view interpolation (docs/algorithms.md section 1.2), with a = |azimuth| in [0, 180]:

    front<->side (a < 90):  r = 1 - a/90
        positive = r*emb_front + (1-r)*emb_side ; negatives = [f_fs(r) * front, f_sf(1-r) * side]
    side<->back (a >= 90):  r = 2 - a/90
        positive = r*emb_side + (1-r)*emb_back  ; negatives = [f_sb(r) * side, f_fsb(r) * front]

Weights here are the magnitudes w_i >= 0 that Perp-Neg subtracts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..utils.errors import ConfigError, require_finite, require_non_negative

#: Canonical view order used by every tensor indexed by view in this package.
VIEWS: Tuple[str, ...] = ("front", "side", "back", "overhead")
FRONT, SIDE, BACK, OVERHEAD = range(4)


def shift_azimuth(azimuth: Tensor) -> Tensor:
    """Azimuth in degrees wrapped to [-180, 180)."""
    return (azimuth + 180.0) % 360.0 - 180.0


@dataclass(frozen=True)
class ViewRanges:
    """Camera ranges of the view regions (degrees).

    front: |azimuth| < front_half_width; back: |azimuth| > 180 - back_half_width;
    overhead: elevation > overhead_elevation (wins over the azimuth regions); side: the rest.
    threestudio's defaults are 45 / 45 / 60; D-SDS narrows the front to 22.5 (section 2c).
    """

    front_half_width: float = 45.0
    back_half_width: float = 45.0
    overhead_elevation: float = 60.0

    def validate(self, prefix: str = "", keys: Optional[Mapping[str, str]] = None) -> "ViewRanges":
        """``keys``: the config key of each field where the caller names them differently
        (a prompt processor's ``front_threshold`` for ``front_half_width``)."""
        key = lambda name: prefix + (keys or {}).get(name, name)  # noqa: E731
        for name in ("front_half_width", "back_half_width"):
            value = getattr(self, name)
            if not 0.0 <= value <= 180.0:
                raise ConfigError(key(name), value, "must lie in [0, 180] degrees")
        if self.front_half_width + self.back_half_width > 180.0:
            raise ConfigError(
                key("front_half_width"),
                self.front_half_width,
                f"front and back regions overlap ({key('front_half_width')} {self.front_half_width} + "
                f"{key('back_half_width')} {self.back_half_width} > 180 degrees)",
            )
        if not -90.0 <= self.overhead_elevation <= 90.0:
            raise ConfigError(
                key("overhead_elevation"), self.overhead_elevation, "must lie in [-90, 90]"
            )
        return self


def classify_views(elevation: Tensor, azimuth: Tensor, ranges: ViewRanges) -> Tensor:
    """Index into VIEWS of the region each camera lies in. [B] -> [B] long."""
    a = shift_azimuth(azimuth).abs()
    view = torch.full_like(a, SIDE, dtype=torch.long)
    view[a < ranges.front_half_width] = FRONT
    view[a > 180.0 - ranges.back_half_width] = BACK
    view[elevation > ranges.overhead_elevation] = OVERHEAD
    return view


@dataclass(frozen=True)
class DecayWeight:
    """f(x) = a * exp(-b * x) + c, and 0 for x > cutoff when a cutoff is set.

    The public Perp-Neg implementations use this shape; stable-dreamfusion adds hard cut-offs.
    """

    a: float
    b: float
    c: float
    cutoff: Optional[float] = None

    def __call__(self, x: Tensor) -> Tensor:
        value = self.a * torch.exp(-self.b * x) + self.c
        if self.cutoff is not None:
            value = torch.where(x > self.cutoff, torch.zeros_like(value), value)
        return value

    @classmethod
    def from_config(cls, key: str, value: Sequence[float]) -> "DecayWeight":
        shape = "must be [a, b, c] or [a, b, c, cutoff] for f(x) = a*exp(-b*x) + c (0 where x > cutoff)"
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ConfigError(key, value, shape)
        given = list(value)
        if len(given) not in (3, 4):
            raise ConfigError(key, given, shape)
        for name, v in zip(("a", "b", "c", "cutoff"), given):
            try:
                require_finite(f"{key}.{name}", v)
            except ConfigError as error:
                raise ConfigError(key, given, f"{name} = {v!r} {error.problem}; {shape}") from None
        weight = cls(*[float(v) for v in given])
        # a*exp(-b*x) + c is monotone in x, so checking both ends covers x in [0, 1].
        for x in (0.0, 1.0):
            fx = weight.at(x)
            if not math.isfinite(fx):
                raise ConfigError(key, given, f"gives f({x:g}) = {fx}: exp(-b*x) overflows; use a smaller |b|")
            if not fx >= 0:
                raise ConfigError(key, given, f"gives a negative weight f({x:g}) = {fx:.4g}; "
                                  "Perp-Neg weights must be >= 0 for x in [0, 1]")
        return weight

    def at(self, x: float) -> float:
        """f(x) for a number x, ignoring the cutoff (inf where exp overflows)."""
        try:
            return self.a * math.exp(-self.b * x) + self.c
        except OverflowError:
            return math.copysign(math.inf, self.a) if self.a else self.c

    def peak(self) -> float:
        """The largest weight f takes for x in [0, 1] (f is monotone: at an end, or the cutoff)."""
        if self.cutoff is not None and self.cutoff < 0:
            return 0.0
        upper = 1.0 if self.cutoff is None else min(1.0, self.cutoff)
        return max(self.at(0.0), self.at(upper))


@dataclass(frozen=True)
class PerpNegWeights:
    """The four negative-weight functions of the Perp-Neg view interpolation."""

    f_sb: DecayWeight
    f_fsb: DecayWeight
    f_fs: DecayWeight
    f_sf: DecayWeight


#: Named presets. "threestudio" is the public Perp-Neg default (f_fs(1) = f_sf(1) ~ 0);
#: "stable-dreamfusion" is ashawkey/stable-dreamfusion's (negative_w = -2, front decay 2,
#: side decay 10, cut-offs at r > 0.8 / r < 0.2, constant front negative behind the object).
PERP_NEG_PRESETS: Dict[str, PerpNegWeights] = {
    "threestudio": PerpNegWeights(
        f_sb=DecayWeight(1.0, 0.5, -0.606),
        f_fsb=DecayWeight(1.0, 0.5, 0.967),
        f_fs=DecayWeight(4.0, 0.5, -2.426),
        f_sf=DecayWeight(4.0, 0.5, -2.426),
    ),
    "stable-dreamfusion": PerpNegWeights(
        f_sb=DecayWeight(1.0, 10.0, 0.0, cutoff=0.8),
        f_fsb=DecayWeight(0.0, 0.0, 2.0),
        f_fs=DecayWeight(2.0, 2.0, 0.0, cutoff=0.8),
        f_sf=DecayWeight(2.0, 10.0, 0.0, cutoff=0.8),
    ),
}


def interpolation_ratio(azimuth: Tensor) -> Tuple[Tensor, Tensor]:
    """Perp-Neg ratio r in [0, 1] and whether each camera is on the front<->side segment.

    front<->side: r = 1 - |azi|/90 (1 = front, 0 = side);
    side<->back:  r = 2 - |azi|/90 (1 = side, 0 = back).
    """
    a = shift_azimuth(azimuth).abs()
    front_side = a < 90.0
    r = torch.where(front_side, 1.0 - a / 90.0, 2.0 - a / 90.0)
    return r, front_side


@dataclass
class ViewPlan:
    """Per-sample Perp-Neg conditioning, as mixtures of the view embeddings (order VIEWS).

    positive_mix [B, V]: positive embedding = sum_v positive_mix[b, v] * emb_v.
    negative_weight [B, V]: weight w >= 0 of view v as a negative of sample b (0 = not used).
    """

    positive_mix: Tensor
    negative_weight: Tensor


def overhead_negative_vector(
    overhead_negatives: Mapping[str, float], key: str = "overhead_negatives"
) -> Tuple[float, ...]:
    """Validate ``{view: weight}`` for overhead cameras into a weight per view (order VIEWS)."""
    allowed = VIEWS[:3]
    weights = [0.0] * len(VIEWS)
    for view, weight in dict(overhead_negatives).items():
        if view not in allowed:
            raise ConfigError(f"{key}.{view}", weight, f"unknown view name {view!r}", allowed)
        require_non_negative(f"{key}.{view}", require_finite(f"{key}.{view}", weight))
        weights[VIEWS.index(view)] = float(weight)
    return tuple(weights)


def plan_perp_neg(
    azimuth: Tensor,
    is_overhead: Tensor,
    weights: PerpNegWeights,
    overhead_negative: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
) -> ViewPlan:
    """Positive mixture and negative weights of every sample (see the module docstring).

    Overhead cameras take the overhead embedding as positive and ``overhead_negative``
    (a weight per view, order VIEWS) as negatives; threestudio uses none there.
    """
    r, front_side = interpolation_ratio(azimuth)
    batch = azimuth.shape[0]
    positive_mix = azimuth.new_zeros(batch, len(VIEWS), dtype=torch.float32)
    negative_weight = torch.zeros_like(positive_mix)
    r = r.float()
    fs, sb = front_side, ~front_side

    positive_mix[:, FRONT] = torch.where(fs, r, torch.zeros_like(r))
    positive_mix[:, SIDE] = torch.where(fs, 1.0 - r, r)
    positive_mix[:, BACK] = torch.where(sb, 1.0 - r, torch.zeros_like(r))
    negative_weight[:, FRONT] = torch.where(fs, weights.f_fs(r), weights.f_fsb(r))
    negative_weight[:, SIDE] = torch.where(fs, weights.f_sf(1.0 - r), weights.f_sb(r))

    overhead = is_overhead.bool()
    if overhead.any():
        positive_mix[overhead] = positive_mix.new_tensor([0.0, 0.0, 0.0, 1.0])
        negative_weight[overhead] = negative_weight.new_tensor(list(overhead_negative))
    return ViewPlan(positive_mix=positive_mix, negative_weight=negative_weight.clamp_min(0.0))
