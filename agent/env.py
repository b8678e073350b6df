"""The pair-trading environment (numpy only).

Two log prices whose spread follows a mean-reverting Ornstein–Uhlenbeck process
with occasional regime shifts (the mean jumps, the half-life and volatility
change), or a user's own two price columns (``PairData.from_csv``). The action
is the target position in the spread in [-1, 1]; the reward is the position's
PnL over the next step minus a proportional cost on the change of position.
States are feature set 2 (``agent.features``), equal to what the streaming
builder (``agent.streaming``) computes from the same prices and positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract import CsvData, Instruments, PairContract, Spread
from agent.data import PriceDataError, PriceTable, load_prices
from agent.features import HOLD_CAP, STATE_DIM, WARMUP, sign, spread_features, state_row, tail_features

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
    hedge_ratio: float = 1.0  # log A = hedge_ratio · log B + intercept + spread
    market_sigma: float = 0.012  # daily volatility of the common factor (log B)
    # The cost the `cost_vol` feature reports (None: ``cost``). Set it to the
    # evaluation cost when ``cost`` is inflated for learning, so training sees
    # the feature a live strategy will compute from the model's contract.
    feature_cost: float | None = None
    # Learning only: the reward is pnl − cost − risk_aversion · pnl², a mean-variance reward that
    # makes holding a position through large moves of the spread cost something. Scoring (and
    # validation) keeps 0, so every figure is the plain PnL after cost.
    risk_aversion: float = 0.0

    def contract(self) -> PairContract:
        """The pair contract of a model trained on this generator (cost: the feature cost)."""
        return PairContract.synthetic(
            hedge_ratio=self.hedge_ratio,
            intercept=SYNTHETIC_INTERCEPT,
            cost=self.cost if self.feature_cost is None else self.feature_cost,
            half_life=self.half_life,
            sigma=self.sigma,
            regime_prob=self.regime_prob,
            regime_mean_jump=self.regime_mean_jump,
            market_sigma=self.market_sigma,
        )


SYNTHETIC_INTERCEPT = math.log(50.0)  # log A = hedge_ratio · log B + log 50 + spread
MIN_EPISODE = 50  # steps: the shortest training window or held-out part a price file may leave


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
    log_a = cfg.hedge_ratio * log_b + spread + SYNTHETIC_INTERCEPT
    return np.exp(log_a), np.exp(log_b)


def rows_needed(train_fraction: float) -> int:
    """The fewest usable rows leaving ``WARMUP + MIN_EPISODE`` training and ``MIN_EPISODE`` held-out rows."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train fraction must be in (0, 1), got {train_fraction}")
    low = WARMUP + 2 * MIN_EPISODE
    high = math.ceil((WARMUP + MIN_EPISODE) / train_fraction + MIN_EPISODE / (1.0 - train_fraction)) + 2
    for n in range(low, max(low, high) + 1):
        n_train = int(n * train_fraction)
        if n_train >= WARMUP + MIN_EPISODE and n - n_train >= MIN_EPISODE:
            return n
    return high  # unreachable: ``high`` always qualifies


@dataclass(frozen=True)
class PairData:
    """A user's pair: spread = log A − β·log B − α, with β and α fitted (OLS) on the training rows only.

    The first ``n_train`` rows are the training window; the rest is held out.
    ``table`` says where the prices came from (None for prices given directly).
    """

    spread: np.ndarray
    hedge_ratio: float
    intercept: float
    n_train: int
    train_fraction: float = 0.7
    dates: tuple[str, ...] | None = None  # ISO dates of the rows, when the file had a date column
    table: PriceTable | None = None

    @classmethod
    def from_prices(
        cls,
        a: Sequence[float] | np.ndarray,
        b: Sequence[float] | np.ndarray,
        train_fraction: float = 0.7,
        table: PriceTable | None = None,
    ) -> PairData:
        where = str(table.path) if table is not None else "prices"
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or a.ndim != 1:
            raise PriceDataError(f"{where}: the two price series must be 1-D and of equal length")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and (a > 0).all() and (b > 0).all()):
            raise PriceDataError(f"{where}: prices must be finite and positive")
        need = rows_needed(train_fraction)
        if len(a) < need:
            dropped = (
                f" ({len(table.dropped)} dropped for a missing value)" if table and table.dropped else ""
            )
            raise PriceDataError(
                f"{where}: {len(a)} usable rows{dropped} are too few: need at least {need} "
                f"(warm-up {WARMUP} + {MIN_EPISODE} training steps and {MIN_EPISODE} held out, "
                f"at train fraction {train_fraction})"
            )
        n_train = int(len(a) * train_fraction)
        # OLS of log A on log B over the training window only: no look-ahead.
        x, y = np.log(b[:n_train]), np.log(a[:n_train])
        var = float(np.var(x))
        if var <= 0.0:
            raise PriceDataError(f"{where}: price B is constant over the training window: no hedge ratio")
        beta = float(np.cov(x, y, bias=True)[0, 1] / var)
        alpha = float(y.mean() - beta * x.mean())
        spec = Spread(hedge_ratio=beta, intercept=alpha, estimation="ols_on_training_window")
        spread = spec.path(a, b)
        if float(np.std(spread[:n_train])) <= 1e-12:
            raise PriceDataError(
                f"{where}: the spread log A − {beta:.6g}·log B is constant over the training window "
                "(one leg is flat, or the two move in exact proportion): there is nothing to trade"
            )
        dates = table.dates if table is not None else None
        return cls(spread, beta, alpha, n_train, train_fraction, dates, table)

    @classmethod
    def from_csv(
        cls, path: str | Path, columns: Sequence[str] | None = None, train_fraction: float = 0.7
    ) -> PairData:
        """Read a price file (``agent.data.load_prices``: the only two numeric columns unless named)."""
        table = load_prices(path, columns)
        return cls.from_prices(table.a, table.b, train_fraction, table)

    @property
    def spread_spec(self) -> Spread:
        return Spread(
            hedge_ratio=self.hedge_ratio, intercept=self.intercept, estimation="ols_on_training_window"
        )

    @property
    def held_out(self) -> tuple[int, int]:
        """The held-out rows, [start, stop)."""
        return self.n_train, len(self.spread)

    def split_dates(self) -> tuple[tuple[str, str], tuple[str, str]] | None:
        """((first, last) training date, (first, last) held-out date), or None without dates."""
        if self.dates is None:
            return None
        d = self.dates
        return (d[0], d[self.n_train - 1]), (d[self.n_train], d[-1])

    def contract(self, cost: float, legs: tuple[str, str] | None = None) -> PairContract:
        """The pair contract of a model trained on this file (legs default to the column names)."""
        if self.table is None:
            raise ValueError("only a pair read from a file (PairData.from_csv) has a contract")
        t = self.table
        split = self.split_dates()
        data = CsvData(
            file=t.path.name,
            sha256=t.sha256,
            columns=t.columns,
            date_column=t.date_column,
            rows=len(t),
            dropped_rows=len(t.dropped),
            train_fraction=self.train_fraction,
            train_rows=(0, self.n_train),
            train_lines=(t.lines[0], t.lines[self.n_train - 1]),
            train_dates=None if split is None else split[0],
            test_dates=None if split is None else split[1],
            log_ratio=self.log_ratio_range(),
        )
        leg_a, leg_b = legs or t.columns
        return PairContract.from_dict(
            {
                "instruments": Instruments(leg_a=leg_a, leg_b=leg_b).model_dump(),
                "spread": self.spread_spec.model_dump(),
                "data": data.model_dump(),
                "cost": cost,
            },
            f"contract of {t.path.name}",
        )

    def log_ratio_range(self) -> tuple[float, float] | None:
        """log(A/B) over the training rows: its lowest and highest value."""
        if self.table is None:
            return None
        ratio = np.log(np.asarray(self.table.a[: self.n_train], dtype=np.float64)) - np.log(
            np.asarray(self.table.b[: self.n_train], dtype=np.float64)
        )
        return float(ratio.min()), float(ratio.max())

    def source(self, held_out: bool) -> PathSource:
        """Random episodes drawn from the training window, or from the held-out part."""
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

    def walk_forward(self) -> PathSource:
        """The whole held-out part as one path, whatever length is asked: its first state is the
        first held-out row (the ``WARMUP`` rows before it are its history) and it steps to the last row."""
        path = self.spread[self.n_train - WARMUP :]

        def whole(rng: np.random.Generator, n: int) -> np.ndarray:
            return path

        return whole

    @property
    def walk_forward_steps(self) -> int:
        """Steps in the walk forward: one per held-out row but the last."""
        return len(self.spread) - self.n_train - 1


class PairTradingEnv:
    """reset() → state; step(action) → (state, reward, done, info). States have 28 features.

    A source may return a path longer than asked (``PairData.walk_forward``):
    the episode then runs to the path's end."""

    state_dim = STATE_DIM

    def __init__(
        self, config: PairConfig | None = None, seed: int | None = None, source: PathSource | None = None
    ) -> None:
        self.config = config or PairConfig()
        self.rng = np.random.default_rng(seed)
        self._source = source or (lambda rng, n: ou_spread(self.config, rng, n))
        cfg = self.config
        self.feature_cost = cfg.cost if cfg.feature_cost is None else cfg.feature_cost
        self.spread = np.zeros(0)
        self.t = 0
        self.length = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        n = WARMUP + self.config.episode_length + 1
        self.spread = np.asarray(self._source(self.rng, n), dtype=np.float64)
        if len(self.spread) < WARMUP + 2:
            raise ValueError(
                f"the price data is too short for one episode: {len(self.spread)} < {WARMUP + 2}"
            )
        rows = spread_features(self.spread)
        self.market, self.vol = rows.market, rows.vol
        self.length = len(self.spread) - WARMUP - 1
        self.t = 0
        self.position = 0.0
        self.entry = 0.0
        self.held = HOLD_CAP  # the history before the episode counts as flat
        return self._state()

    @property
    def _i(self) -> int:
        return WARMUP + self.t

    def state64(self) -> np.ndarray:
        """The current state in float64 (before the cast to float32)."""
        i = self._i
        tail = tail_features(
            self.position, float(self.spread[i]), self.entry, self.held, float(self.vol[i]), self.feature_cost
        )
        return state_row(self.market[i], tail)

    def _state(self) -> np.ndarray:
        return self.state64().astype(np.float32)

    def step(self, action: float) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        new = float(np.clip(action, -1.0, 1.0))
        i = self._i
        cost = self.config.cost * abs(new - self.position)
        pnl = new * (self.spread[i + 1] - self.spread[i])
        if sign(new) != sign(self.position):
            self.entry, self.held = float(self.spread[i]), 0
        traded = abs(new - self.position)
        self.position = new
        self.held = min(self.held + 1, HOLD_CAP)
        self.t += 1
        done = self.t >= self.length
        info = {"pnl": pnl, "cost": cost, "position": new, "turnover": traded, "z": float(self.market[i][0])}
        # The end of an episode is a time limit, not a terminal state: the next
        # state is real (the path has one more step) and training bootstraps from it.
        return self._state(), pnl - cost - self.config.risk_aversion * pnl * pnl, done, info
