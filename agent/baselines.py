"""Baseline policies on the same states: the classic z-score rule and flat.

A policy maps a batch of states (n, 28) to target positions (n,)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.features import NAMES

Policy = Callable[[np.ndarray], np.ndarray]

Z = NAMES.index("z60_lag0")
POSITION = NAMES.index("position")
# The rule's look-back is the window of the z-score it reads: feature set 2 has three.
Z_FEATURE: dict[int, int] = {20: NAMES.index("z20"), 60: Z, 120: NAMES.index("z120")}


@dataclass(frozen=True)
class RuleParams:
    """The z-score rule's settings: enter beyond ±entry σ, exit inside ±exit σ, σ over ``lookback`` steps."""

    entry: float = 2.0
    exit: float = 0.5
    lookback: int = 60

    def check(self) -> None:
        if not 0 <= self.exit < self.entry:
            raise ValueError(f"need 0 <= exit < entry, got exit={self.exit}, entry={self.entry}")
        if self.lookback not in Z_FEATURE:
            raise ValueError(
                f"the look-back must be one of {', '.join(map(str, Z_FEATURE))} steps "
                f"(the z-scores of the feature set), got {self.lookback}"
            )

    def label(self) -> str:
        return f"entry ±{self.entry:g}σ, exit ±{self.exit:g}σ, z over {self.lookback} steps"


DEFAULT_RULE = RuleParams()


def zscore_rule(entry: float = 2.0, exit: float = 0.5, lookback: int = 60) -> Policy:
    """Short the spread when z > entry, long when z < −entry, close inside ±exit, else hold
    (z: the spread's z-score over the last ``lookback`` steps: 20, 60 or 120)."""
    RuleParams(entry, exit, lookback).check()
    zi = Z_FEATURE[lookback]

    def policy(states: np.ndarray) -> np.ndarray:
        z, pos = states[:, zi], states[:, POSITION]
        out = pos.copy()
        out[np.abs(z) < exit] = 0.0
        out[z > entry] = -1.0
        out[z < -entry] = 1.0
        return out

    return policy


def rule_positions(z: np.ndarray, params: RuleParams) -> np.ndarray:
    """The positions the rule holds walking ``z`` (its z-score, row by row) from flat: what
    ``zscore_rule`` answers when each state's position is the previous answer."""
    entry, exit = params.entry, params.exit
    out = np.empty(len(z))
    p = 0.0
    for t, zt in enumerate(z.tolist()):
        if abs(zt) < exit:
            p = 0.0
        if zt > entry:
            p = -1.0
        elif zt < -entry:
            p = 1.0
        out[t] = p
    return out


def flat(states: np.ndarray) -> np.ndarray:
    return np.zeros(len(states))
