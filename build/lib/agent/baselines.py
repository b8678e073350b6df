"""Baseline policies on the same states: the classic z-score rule and flat.

A policy maps a batch of states (n, 28) to target positions (n,)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from agent.features import NAMES

Policy = Callable[[np.ndarray], np.ndarray]

Z = NAMES.index("z60_lag0")
POSITION = NAMES.index("position")


def zscore_rule(entry: float = 2.0, exit: float = 0.5) -> Policy:
    """Short the spread when z > entry, long when z < −entry, close inside ±exit, else hold."""
    if not 0 <= exit < entry:
        raise ValueError(f"need 0 <= exit < entry, got exit={exit}, entry={entry}")

    def policy(states: np.ndarray) -> np.ndarray:
        z, pos = states[:, Z], states[:, POSITION]
        out = pos.copy()
        out[np.abs(z) < exit] = 0.0
        out[z > entry] = -1.0
        out[z < -entry] = 1.0
        return out

    return policy


def flat(states: np.ndarray) -> np.ndarray:
    return np.zeros(len(states))
