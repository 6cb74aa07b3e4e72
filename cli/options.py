"""argparse value types shared by the commands (a bad value is a usage error, exit status 2)."""
from __future__ import annotations

import argparse
import math


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An int >= 0."""
    return _int_at_least(text, 0)


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed, 0 <= seed < 2**32 (numpy's range)."""
    value = non_negative_int(text)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value
