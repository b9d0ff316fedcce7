"""argparse types for numeric command-line options: a bad value is refused while parsing, as one
line naming the option (argparse prints "argument --epochs: ..." and exits with code 2)."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _checked(text: str, kind: type, ok: Callable[[float], bool], rule: str) -> Any:
    value = kind(_number(text, kind))
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} {rule}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 1, "must be at least 1")


def nonnegative_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 0, "must be 0 or more")


def positive_float(text: str) -> float:
    return _checked(text, float, lambda v: v > 0, "must be more than 0")


def unit_interval(text: str) -> float:
    return _checked(text, float, lambda v: 0 <= v <= 1, "must be between 0 and 1")


def input_size(text: str) -> int:
    value = positive_int(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"{value} must be a multiple of 32 (the backbone's stride)")
    return value


def class_list(text: str) -> tuple[str, ...]:
    names = tuple(c.strip() for c in text.split(","))
    if not names or any(not c for c in names):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated, non-empty class names")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: a class name is repeated")
    return names


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """An integer in [lo, hi] (a port, a seed)."""
    def parse(text: str) -> int:
        return _checked(text, int, lambda v: lo <= v <= hi, f"is outside {lo}..{hi}")
    return parse


def stall_probability(text: str) -> float:
    """A per-cycle stall probability in [0, 1): at 1 the bus would never move."""
    return _checked(text, float, lambda v: 0.0 <= v < 1.0, "must be in [0, 1) (a stall probability)")
