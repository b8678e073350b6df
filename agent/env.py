"""The pair-trading environment (numpy only).

Two log prices whose spread follows a mean-reverting Ornstein–Uhlenbeck process
with occasional regime shifts (the mean jumps, the half-life and volatility
change), or a user's own two price columns (``PairData.from_csv``). The action
is the target position in the spread in [-1, 1]; the reward is the position's
PnL over the next step minus a proportional cost on the change of position.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.features import STATE_DIM, WARMUP, market_features, state_vector, vol_scale

PathSource = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class PairConfig:
    """The synthetic pair. Steps are trading days."""

    episode_length: int = 256
    half_life: float = 12.0  # steps for the spread's deviation to halve
    sigma: float = 0.01  # std of the spread's innovation per step
    regime_prob: float = 0.004  # chance per step of a regime shift
    regime_mean_jump: float = 1.0  # std of the mean's jump, in stationary std units
    cost: float = 0.0005  # cost per unit of |position change| (5 bp of notional)
    hedge_ratio: float = 1.0  # log A = hedge_ratio · log B + spread
    market_sigma: float = 0.012  # daily volatility of the common factor (log B)


def ou_spread(cfg: PairConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """A spread path of ``n`` steps: OU with regime shifts, started at its stationary law."""
    theta = math.log(2.0) / cfg.half_life
    sigma = cfg.sigma
    mu = 0.0
    stat = sigma / math.sqrt(2.0 * theta)
    s = np.empty(n)
    s[0] = rng.normal(mu, stat)
    eps = rng.standard_normal(n)
    shifts = rng.random(n) < cfg.regime_prob
    for t in range(1, n):
        if shifts[t]:
            theta = math.log(2.0) / float(np.clip(cfg.half_life * math.exp(rng.normal(0, 0.5)), 3, 80))
            sigma = cfg.sigma * math.exp(rng.normal(0, 0.3))
            stat = sigma / math.sqrt(2.0 * theta)
            mu += rng.normal(0.0, cfg.regime_mean_jump * stat)
        decay = math.exp(-theta)
        s[t] = mu + (s[t - 1] - mu) * decay + sigma * math.sqrt((1 - decay * decay) / (2 * theta)) * eps[t]
    return s


def synthetic_prices(cfg: PairConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two price series (A, B) whose log spread is ``ou_spread``."""
    spread = ou_spread(cfg, rng, n)
    log_b = math.log(100.0) + np.cumsum(rng.normal(0.0, cfg.market_sigma, n))
    log_a = cfg.hedge_ratio * log_b + spread + math.log(50.0)
    return np.exp(log_a), np.exp(log_b)


@dataclass(frozen=True)
class PairData:
    """A user's pair: the hedge ratio is estimated on the training window only."""

    spread: np.ndarray
    hedge_ratio: float
    intercept: float
    n_train: int

    @classmethod
    def from_prices(cls, a: np.ndarray, b: np.ndarray, train_fraction: float = 0.7) -> PairData:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or a.ndim != 1:
            raise ValueError("the two price series must be 1-D and of equal length")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and (a > 0).all() and (b > 0).all()):
            raise ValueError("prices must be finite and positive")
        n_train = int(len(a) * train_fraction)
        if n_train < WARMUP + 50 or len(a) - n_train < 50:
            raise ValueError(f"{len(a)} rows are too few: need {WARMUP + 50} for training and 50 held out")
        la, lb = np.log(a), np.log(b)
        # OLS of log A on log B over the training window only: no look-ahead.
        x, y = lb[:n_train], la[:n_train]
        beta = float(np.cov(x, y, bias=True)[0, 1] / np.var(x))
        alpha = float(y.mean() - beta * x.mean())
        return cls(spread=la - beta * lb - alpha, hedge_ratio=beta, intercept=alpha, n_train=n_train)

    @classmethod
    def from_csv(
        cls, path: str | Path, columns: tuple[str, str] | None = None, train_fraction: float = 0.7
    ) -> PairData:
        """Read two price columns (the first two numeric ones unless ``columns`` names them)."""
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise ValueError(f"{path}: no rows")
        names = list(columns) if columns else [c for c in rows[0] if _is_number(rows[0][c])][:2]
        if len(names) != 2:
            raise ValueError(f"{path}: need two numeric price columns, found {names}")
        try:
            a = np.array([float(r[names[0]]) for r in rows])
            b = np.array([float(r[names[1]]) for r in rows])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: bad price value: {exc}") from exc
        return cls.from_prices(a, b, train_fraction)

    def source(self, held_out: bool) -> PathSource:
        """Episodes drawn from the training window, or from the held-out part."""
        lo, hi = (self.n_train, len(self.spread)) if held_out else (0, self.n_train)

        def draw(rng: np.random.Generator, n: int) -> np.ndarray:
            # History before ``lo`` may feed the warm-up: that is the past, not a peek.
            first = max(0, lo - WARMUP)
            span = hi - first
            if span < n:
                return self.spread[first:hi]
            start = int(rng.integers(first, hi - n + 1))
            return self.spread[start : start + n]

        return draw


def _is_number(text: str | None) -> bool:
    try:
        float(text or "")
        return True
    except ValueError:
        return False


class PairTradingEnv:
    """reset() → state; step(action) → (state, reward, done, info). States have 28 features."""

    state_dim = STATE_DIM

    def __init__(
        self, config: PairConfig | None = None, seed: int | None = None, source: PathSource | None = None
    ) -> None:
        self.config = config or PairConfig()
        self.rng = np.random.default_rng(seed)
        self._source = source or (lambda rng, n: ou_spread(self.config, rng, n))
        self.spread = np.zeros(0)
        self.t = 0
        self.length = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        n = WARMUP + self.config.episode_length + 1
        self.spread = self._source(self.rng, n)
        if len(self.spread) < WARMUP + 2:
            raise ValueError("the price data is too short for one episode")
        self.market = market_features(self.spread)
        self.vol = vol_scale(self.spread)
        self.length = len(self.spread) - WARMUP - 1
        self.t = 0
        self.position = 0.0
        self.entry = 0.0
        self.held = 0
        return self._state()

    @property
    def _i(self) -> int:
        return WARMUP + self.t

    def _state(self) -> np.ndarray:
        i = self._i
        vol = self.vol[i] if self.vol[i] > 1e-12 else 1.0
        unreal = self.position * (self.spread[i] - self.entry) / vol if self.position else 0.0
        return state_vector(
            self.market[i], self.position, unreal, min(self.held / 100.0, 1.0), self.t / self.length
        )

    def step(self, action: float) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        new = float(np.clip(action, -1.0, 1.0))
        i = self._i
        cost = self.config.cost * abs(new - self.position)
        pnl = new * (self.spread[i + 1] - self.spread[i])
        if np.sign(new) != np.sign(self.position):
            self.entry, self.held = self.spread[i], 0
        traded = abs(new - self.position)
        self.position = new
        self.held += 1
        self.t += 1
        done = self.t >= self.length
        info = {"pnl": pnl, "cost": cost, "position": new, "turnover": traded, "z": float(self.market[i][0])}
        # The end of an episode is a time limit, not a terminal state: the next
        # state is real (the path has one more step) and training bootstraps from it.
        return self._state(), pnl - cost, done, info
