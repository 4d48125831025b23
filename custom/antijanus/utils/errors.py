"""Configuration errors that name the offending key and what is allowed."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional


class ConfigError(ValueError):
    """A bad configuration value, raised when a module is configured (never mid-training).

    The message always names the config key, the value given and what is allowed, e.g.
    ``perp_neg_preset='foo' is not allowed; allowed values: 'threestudio', 'stable-dreamfusion'``.
    """

    def __init__(
        self,
        key: str,
        value: Any,
        problem: str,
        allowed: Optional[Iterable[Any]] = None,
    ) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        self.allowed = None if allowed is None else tuple(allowed)
        message = f"config key `{key}` = {value!r}: {problem}"
        if self.allowed is not None:
            message += "; allowed values: " + ", ".join(repr(a) for a in self.allowed)
        super().__init__(message)

    def __reduce__(self):  # crosses process boundaries intact (worker pools)
        return (type(self), (self.key, self.value, self.problem, self.allowed))

    def within(self, block: str) -> "ConfigError":
        """The same error with the key's full path in the run's config (``block`` + '.' + key),
        unless the key already is a full path."""
        if self.key.startswith(block + ".") or self.key.startswith(("system.", "data.", "trainer.")):
            return self
        return type(self)(f"{block}.{self.key}", self.value, self.problem, self.allowed)


def require_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(key, value, "is not allowed", allowed)


def require_probability(key: str, value: Any) -> None:
    """A number in [0, 1] (not a bool), else a ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(key, value, "a probability in [0, 1]")


def require_non_negative(key: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ConfigError(key, value, "must be >= 0")


def require_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, value, "must be > 0")


def require_finite(key: str, value: Any) -> float:
    """A finite real number (not a bool, a string, inf or NaN), else a ConfigError naming the
    key; returns it as a float. (``inf`` passes ``> 0`` and ``>= 0``: check this first.)"""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(key, value, "must be a number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(key, value, "must be a finite number (inf and nan are not)")
    return number
