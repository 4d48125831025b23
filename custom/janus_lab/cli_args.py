"""What every lab command line checks before any work: argparse types for counts and numbers
(an invalid value is argparse's one-line error, exit 2), no value listed twice in a list option,
and an output folder that can be created and written."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from typing import Any, Callable, Iterable, Optional, Sequence


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"an integer >= {minimum}, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"an integer >= {minimum}, not {value}")
        return value

    return parse


def number_in(low: float = -math.inf, high: float = math.inf, low_open: bool = False,
              high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number between ``low`` and ``high`` (each bound included
    unless ``*_open``)."""
    wanted = "a finite number" + _bounds(low, high, low_open, high_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{wanted}, not {text!r}") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"{wanted}, not {text}")
        return value

    return parse


def _bounds(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """' > 0', ' in [-90, 90]', ... ('' when unbounded)."""
    if math.isinf(low) and math.isinf(high):
        return ""
    if math.isinf(high):
        return f" {'>' if low_open else '>='} {low:g}"
    if math.isinf(low):
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


count = integer_at_least(1)  # jobs, threads, steps, images, views ...
seed = integer_at_least(0)
positive_number = number_in(0.0, low_open=True)  # learning rates, guidance scales, distances
non_negative_number = number_in(0.0)
finite_number = number_in()


def existing_folder(text: str) -> str:
    """An argparse type: a folder that exists (a model folder)."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return text


def first_repeat(values: Optional[Iterable[Any]]) -> Optional[Any]:
    """The first value listed a second time (1 and 1.0 are the same value), else None."""
    seen = []
    for value in values or ():
        if value in seen:
            return value
        seen.append(value)
    return None


def refuse_repeats(parser: argparse.ArgumentParser, args: argparse.Namespace, options: Sequence[str]) -> None:
    """argparse's one-line error for the first of ``options`` (e.g. ``--seeds``) that lists a
    value twice: its runs or images would count twice."""
    for option in options:
        values = getattr(args, option.lstrip("-").replace("-", "_"))
        repeated = first_repeat(values)
        if repeated is not None:
            parser.error(f"argument {option}: {repeated!r} is listed twice (it would count twice)")


def folder_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be used as an output folder (created if missing, a file written and
    removed there), or None when it can."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return f"cannot create or write the folder {path}: {error.strerror or error}"
    return None


def require_output_folder(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """argparse's one-line error when ``path`` (the value of ``option``) cannot be an output folder."""
    problem = folder_problem(path)
    if problem is not None:
        parser.error(f"argument {option}: {problem}")
