"""Argument types the benchmarks' command lines share: comma-separated lists,
whose bad spelling is argparse's one-line error rather than a traceback."""

from __future__ import annotations

import argparse


def positive_ints(text: str) -> tuple[int, ...]:
    """``"64,64"`` → ``(64, 64)``: sizes, counts."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return values


def positive_floats(text: str) -> list[float]:
    """``"1000,3000"`` → ``[1000.0, 3000.0]``: rates."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive numbers")
    return values


def positive_int(text: str) -> int:
    """One positive whole number: a count."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    """One positive number: a duration."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value
