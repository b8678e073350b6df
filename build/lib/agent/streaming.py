"""The streaming feature builder: two prices and the position held in, the
model's 28-feature state out, one tick at a time, equal to the training
environment's states (same kernel, same position rules). Imports no torch.

A strategy's loop::

    builder = FeatureBuilder(contract)
    builder.warm(history_a, history_b)          # at least builder.warmup + 1 ticks
    position = 0.0
    for price_a, price_b in feed:
        state = builder.update(price_a, price_b, position)
        if state is not None:
            position = act(state)               # executed at this tick's prices
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agent.contract import PairContract
from agent.features import HOLD_CAP, STATE_DIM, WARMUP, SpreadKernel, sign, tail_features


class FeatureError(ValueError):
    """A tick the builder cannot use (bad price or position), or a state asked for too early."""


class FeatureBuilder:
    """Streaming features of one pair under one contract.

    ``update(price_a, price_b, position)`` takes the tick's two prices and the
    position held over the step that ends at this tick (the target chosen at
    the previous tick, as executed; clipped to [-1, 1] as the environment
    clips actions). Position rules, as in ``agent.env``: when the position's
    sign changes, its entry is the previous tick's spread (this tick's, on the
    first tick) and the holding count restarts; history before the first tick
    counts as flat for at least ``HOLD_CAP`` steps.
    """

    def __init__(self, contract: PairContract) -> None:
        self.contract = contract
        self._beta = contract.spread.hedge_ratio
        self._alpha = contract.spread.intercept
        self._cost = contract.cost
        self.reset()

    def reset(self) -> None:
        """Forget every tick (the contract stays)."""
        self._kernel = SpreadKernel()
        self._spread = math.nan  # the last tick's spread
        self.position = 0.0
        self.entry = 0.0  # spread at which the position's current sign was entered
        self.held = HOLD_CAP  # steps since the position's sign last changed (saturates)
        self._row: list[float] | None = None

    @property
    def warmup(self) -> int:
        """Ticks of history before the first state (the state comes with tick ``warmup + 1``)."""
        return WARMUP

    @property
    def ticks(self) -> int:
        """Ticks fed since the builder was made or reset."""
        return self._kernel.t + 1

    @property
    def needed(self) -> int:
        """Ticks still to feed before ``update`` returns a state (0 once warmed up)."""
        return max(0, WARMUP + 1 - self.ticks)

    @property
    def ready(self) -> bool:
        return self._row is not None

    @property
    def spread(self) -> float:
        """The last tick's spread (NaN before the first tick)."""
        return self._spread

    def update(self, price_a: float, price_b: float, position: float = 0.0) -> np.ndarray | None:
        """Feed one tick; return its float32 state once warmed up, else None."""
        if not (price_a > 0.0 and price_b > 0.0 and math.isfinite(price_a) and math.isfinite(price_b)):
            raise FeatureError(
                f"tick {self.ticks + 1}: prices must be positive and finite, got A={price_a!r}, B={price_b!r}"
            )
        if not math.isfinite(position):
            raise FeatureError(f"tick {self.ticks + 1}: position must be finite, got {position!r}")
        position = 1.0 if position > 1.0 else -1.0 if position < -1.0 else float(position)
        s = math.log(price_a) - self._beta * math.log(price_b) - self._alpha
        out = self._kernel.push(s)
        # The position book, exactly as PairTradingEnv.step keeps it.
        if sign(position) != sign(self.position):
            self.entry = s if math.isnan(self._spread) else self._spread
            self.held = 0
        self.held = min(self.held + 1, HOLD_CAP)
        self.position = position
        self._spread = s
        if out is None:
            self._row = None
            return None
        market, vol = out
        self._row = market + tail_features(position, s, self.entry, self.held, vol, self._cost)
        return np.array(self._row, dtype=np.float32)

    def warm(
        self,
        prices_a: Sequence[float] | np.ndarray,
        prices_b: Sequence[float] | np.ndarray,
        positions: Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Feed a history in one call (positions default to flat); return the last tick's state or None."""
        a = np.asarray(prices_a, dtype=np.float64).tolist()
        b = np.asarray(prices_b, dtype=np.float64).tolist()
        p = [0.0] * len(a) if positions is None else np.asarray(positions, dtype=np.float64).tolist()
        if not len(a) == len(b) == len(p):
            raise FeatureError(f"warm: {len(a)} prices A, {len(b)} prices B and {len(p)} positions differ")
        state = None
        for x, y, q in zip(a, b, p, strict=True):
            state = self.update(x, y, q)
        return state

    def row64(self) -> np.ndarray:
        """The last tick's state in float64 (before the cast to float32)."""
        if self._row is None:
            raise FeatureError(f"no state yet: {self.needed} more tick(s) needed")
        return np.array(self._row, dtype=np.float64)

    def __repr__(self) -> str:
        return (
            f"FeatureBuilder(contract={self.contract.id}, ticks={self.ticks}, needed={self.needed}, "
            f"state_dim={STATE_DIM})"
        )
