"""Walk-forward evaluation on a price file: the rows split into a training window, a
validation window after it and a test window after that (contiguous, each used once);
the z-score rule tuned on the rows before the test window only; the figures of each
policy over the test window; and a paired block-bootstrap interval on a Sharpe difference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.baselines import DEFAULT_RULE, Z_FEATURE, RuleParams, rule_positions
from agent.features import WARMUP, spread_features
from agent.scoring import STEPS_PER_YEAR, Scores, Trace, scores

# The rule's grid: thresholds in σ of its z-score, and the z-score's window (feature set 2 has 20, 60, 120).
ENTRIES = (1.0, 1.5, 2.0, 2.5, 3.0)
EXITS = (0.0, 0.25, 0.5, 1.0)
LOOKBACKS = (20, 60, 120)
RULE_GRID: tuple[RuleParams, ...] = tuple(
    RuleParams(e, x, n) for n in LOOKBACKS for e in ENTRIES for x in EXITS if x < e
)
IN_MARKET = 0.1  # |position| above this counts as a day in the market (the worker's default dead band)
BLOCK = 20  # bootstrap block length in steps: keeps a month of the PnL's autocorrelation together
DRAWS = 2000
BOOTSTRAP_CELLS = 1 << 22  # resampled steps held at once (32 MiB a float64 array)


@dataclass(frozen=True)
class Split:
    """Usable rows [0, validation) train, [validation, test) validate, [test, rows) are the test window.

    ``validation`` is None when the model did not record it (only train and test are known)."""

    validation: int | None
    test: int
    rows: int
    dates: tuple[str, ...] | None = None

    def span(self, lo: int, hi: int) -> str:
        if self.dates is None:
            return f"rows {lo}–{hi - 1}"
        return f"{self.dates[lo]} … {self.dates[hi - 1]}"

    def describe(self) -> str:
        parts = []
        if self.validation is None:
            parts.append(f"train+validation {self.span(0, self.test)} ({self.test} rows)")
        else:
            v = self.validation
            parts.append(f"train {self.span(0, v)} ({v} rows)")
            parts.append(f"validation {self.span(v, self.test)} ({self.test - v} rows)")
        parts.append(f"test {self.span(self.test, self.rows)} ({self.rows - self.test} rows)")
        return "; ".join(parts)


@dataclass(frozen=True)
class Tuned:
    """The rule's settings with the best Sharpe on the tuning rows, and that Sharpe."""

    params: RuleParams
    sharpe: float
    rows: tuple[int, int]  # the rows walked to tune, [lo, hi)
    grid: tuple[tuple[RuleParams, float], ...]  # every setting tried and its Sharpe, in grid order


def rule_walk(
    spread: np.ndarray, market: np.ndarray, lo: int, hi: int, params: RuleParams, cost: float
) -> Scores:
    """The rule walked over rows [lo, hi) from flat, as ``scoring.walk_forward`` walks it (one step a
    row but the last); ``market`` holds the features of ``spread`` (rows before ``hi`` suffice)."""
    z = market[lo : hi - 1, Z_FEATURE[params.lookback]]
    pos = rule_positions(z, params)
    traded = np.abs(np.diff(np.concatenate([[0.0], pos])))
    pnl = pos * np.diff(spread[lo:hi]) - cost * traded
    return scores(pnl[None, :], traded[None, :])


def tune_rule(spread: np.ndarray, hi: int, cost: float, grid: tuple[RuleParams, ...] = RULE_GRID) -> Tuned:
    """The grid's best rule by Sharpe after ``cost`` on one walk over rows [WARMUP, hi), i.e. using
    rows before ``hi`` only (ties: the first in grid order). Nothing at or after ``hi`` is read."""
    if hi < WARMUP + 2:
        raise ValueError(f"tuning needs at least {WARMUP + 2} rows before the test window, got {hi}")
    window = np.asarray(spread[:hi], dtype=np.float64)  # a copy of the past only: no later row is read
    market = spread_features(window).market
    tried = tuple((p, rule_walk(window, market, WARMUP, hi, p, cost).sharpe) for p in grid)
    best = max(tried, key=lambda t: t[1])  # max keeps the first of equal values
    return Tuned(best[0], best[1], (WARMUP, hi), tried)


@dataclass(frozen=True)
class Figures:
    """One policy's figures over the test window."""

    name: str
    label: str
    scores: Scores
    in_market: float  # share of steps with |position| > IN_MARKET
    exposure: float  # mean |position|

    def row(self) -> str:
        s = self.scores
        return (
            f"{self.name:<13} {s.sharpe:6.2f} {s.total_return:8.4f} {s.max_drawdown:7.4f} "
            f"{s.turnover:8.4f} {self.in_market:6.1%}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            **self.scores.as_dict(),
            "in_market": self.in_market,
            "exposure": self.exposure,
        }


HEADER = f"{'':<13} {'sharpe':>6} {'return':>8} {'max_dd':>7} {'turnover':>8} {'in_mkt':>6}"


def figures(name: str, label: str, trace: Trace) -> Figures:
    pos = np.abs(trace.positions)
    return Figures(name, label, trace.scores, float(np.mean(pos > IN_MARKET)), float(np.mean(pos)))


def annual_sharpe(pnl: np.ndarray) -> np.ndarray:
    """Annualised Sharpe of each row of ``pnl`` (0 where a row does not vary)."""
    std = pnl.std(axis=-1)
    mean = pnl.mean(axis=-1)
    safe = np.where(std > 0, std, 1.0)
    out: np.ndarray = np.where(std > 0, mean / safe * math.sqrt(STEPS_PER_YEAR), 0.0)
    return out


@dataclass(frozen=True)
class Difference:
    """Sharpe(a) − Sharpe(b) on the same steps, with a paired moving-block bootstrap interval."""

    value: float
    low: float
    high: float
    se: float
    level: float
    block: int
    draws: int

    def line(self, a: str, b: str) -> str:
        return (
            f"sharpe {a} − {b}: {self.value:+.2f}, {self.level:.0%} interval [{self.low:+.2f}, "
            f"{self.high:+.2f}], s.e. {self.se:.2f} (paired block bootstrap, {self.block}-step blocks, "
            f"{self.draws} draws)"
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "se": self.se,
            "level": self.level,
            "block": self.block,
            "draws": self.draws,
        }


def sharpe_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    block: int = BLOCK,
    draws: int = DRAWS,
    level: float = 0.95,
    seed: int = 0,
) -> Difference:
    """Resample whole blocks of steps (the same steps for both, so their correlation stays) and
    read the interval off the percentiles of the resampled differences."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError("two 1-D PnL series of the same length (at least 2) are needed")
    n = len(a)
    size = min(block, n)
    k = math.ceil(n / size)
    rng = np.random.default_rng(seed)
    # A few draws at a time: all at once held draws × n indices and values (4.8 GB for a
    # 300 000-row file). Drawn in the same order, so the figures are the same either way.
    rows = max(1, BOOTSTRAP_CELLS // n)
    diffs = np.empty(draws)
    for lo in range(0, draws, rows):
        hi = min(draws, lo + rows)
        starts = rng.integers(0, n - size + 1, size=(hi - lo, k))
        idx = (starts[:, :, None] + np.arange(size)).reshape(hi - lo, k * size)[:, :n]
        diffs[lo:hi] = annual_sharpe(a[idx]) - annual_sharpe(b[idx])
    value = float(annual_sharpe(a[None, :])[0] - annual_sharpe(b[None, :])[0])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return Difference(value, float(low), float(high), float(diffs.std()), level, size, draws)


def default_rule_label() -> str:
    return DEFAULT_RULE.label()
