"""Feature set 2: the 28 features of a market state (the serving ``state_dim``),
computed from the spread and the position with trailing windows only: row ``t``
uses the spread up to and including ``t`` and never later.

| # | name | meaning |
|---|---|---|
| 0–9 | `z60_lag0` … `z60_lag9` | `z60` (below) now and at the 9 previous steps |
| 10–14 | `ret_lag0` … `ret_lag4` | spread change over one step, now and 4 steps back, in units of `v120` |
| 15 | `z20` | z-score of the spread against its trailing 20-step mean and std |
| 16 | `z120` | z-score against the trailing 120-step mean and std |
| 17 | `vol_ratio` | `v20` / `v120` − 1 (20- over 120-step volatility of spread changes) |
| 18 | `z60_mean5` | mean of `z60` over the last 5 steps |
| 19 | `z60_mean20` | mean of `z60` over the last 20 steps |
| 20 | `mom5` | spread change over 5 steps in units of `v120` × √5 |
| 21 | `mom20` | spread change over 20 steps in units of `v120` × √20 |
| 22 | `autocorr60` | lag-1 autocorrelation of spread changes over 60 steps (negative: mean-reverting) |
| 23 | `abs_z60` | absolute value of `z60` |
| 24 | `position` | the position held now, in [-1, 1] (short … long the spread) |
| 25 | `unrealised` | position × spread change since its sign last changed, in `v120` units |
| 26 | `holding` | steps since the position's sign last changed, / 100, capped at 1 |
| 27 | `cost_vol` | the contract's cost per unit of position change, in `v120` units |

`z60`: z-score of the spread against its trailing 60-step mean and std.
`v20`, `v120`: population std of the one-step spread changes over the last 20
and 120 steps (`unrealised` uses 1 instead when `v120` is flat). `holding`
counts the history before the first tick as flat for long. `cost_vol` tells
the policy how dear a trade is against a typical move: the other features are
all scale-free, so without it the policy cannot weigh the cost at all.
Stds are population stds; a quantity divided by a std or a volatility at or
below 1e-12 (a flat window) is 0. Every feature is clipped to [-10, 10]; the
means of `z60` average the unclipped z-scores (0 where undefined).

Every rolling sum is exact (each float is held as an integer multiple of a
power of two in a Python int) and every mean, variance and deviation is one
correctly rounded division of exact integers: a constant window has exactly zero variance,
nothing drifts however long the stream, and a row depends on its trailing
window only, so the streaming builder and the whole-path function agree bit
for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FEATURE_SET = 2
STATE_DIM = 28
WARMUP = 140  # ticks of history before the first state: the state comes with tick WARMUP + 1
CLIP = 10.0
EPS = 1e-12  # a std or volatility at or below this is "flat": what it divides is 0
HOLD_CAP = 100  # `holding` saturates after this many steps
PATH_DIM = 24  # features 0–23 depend on the spread path only

# Window lengths of feature set 2, as recorded in a pair contract.
WINDOWS: dict[str, tuple[int, ...]] = {
    "z": (20, 60, 120),
    "vol": (20, 120),
    "autocorr": (60,),
    "z60_mean": (5, 20),
    "momentum": (5, 20),
    "z60_lags": (10,),
    "ret_lags": (5,),
    "hold_cap": (HOLD_CAP,),
}

NAMES: tuple[str, ...] = (
    *(f"z60_lag{i}" for i in range(10)),
    *(f"ret_lag{i}" for i in range(5)),
    "z20",
    "z120",
    "vol_ratio",
    "z60_mean5",
    "z60_mean20",
    "mom5",
    "mom20",
    "autocorr60",
    "abs_z60",
    "position",
    "unrealised",
    "holding",
    "cost_vol",
)
assert len(NAMES) == STATE_DIM

_RING = 128  # > the longest look-back (120), a power of two for cheap indexing
_MASK = _RING - 1
_SQRT5 = math.sqrt(5.0)
_SQRT20 = math.sqrt(20.0)


def _clip(v: float) -> float:
    return CLIP if v > CLIP else -CLIP if v < -CLIP else v


class SpreadKernel:
    """Features 0–23 (and ``v120``) of a spread fed one value at a time.

    ``push(s)`` costs O(1) in the window lengths except ``z60_mean20``'s exactly
    rounded 20-term sum. The spread is held as integers ``X = s · 2**scale``;
    ``scale`` grows (and every stored integer is shifted once) when a value
    needs finer resolution, so every sum stays exact.
    """

    __slots__ = (
        "_d",
        "_d2",
        "_dsh",
        "_p",
        "_s",
        "_sd20",
        "_sd60",
        "_sd120",
        "_sdq20",
        "_sdq60",
        "_sdq120",
        "_sp60",
        "_sq20",
        "_sq60",
        "_sq120",
        "_sx20",
        "_sx60",
        "_sx120",
        "_x",
        "_x2",
        "_zh",
        "scale",
        "t",
    )

    def __init__(self) -> None:
        self.t = -1  # index of the last value pushed
        self.scale = 64
        n = _RING
        # Ring buffers indexed by t & _MASK; never-written slots hold 0, so a
        # window that is not yet full subtracts nothing.
        self._s = [0.0] * n  # spread
        self._x = [0] * n  # spread, fixed point
        self._x2 = [0] * n  # its square (scale 2·scale)
        self._d = [0] * n  # one-step change, fixed point
        self._d2 = [0] * n
        self._p = [0] * n  # d_t · d_{t-1}
        # Histories for the lags, trimmed now and then: slicing a list's end is cheap.
        self._dsh: list[float] = []  # one-step changes, float
        self._zh: list[float] = []  # unclipped z60, 0 when undefined
        self._sx20 = self._sx60 = self._sx120 = 0
        self._sq20 = self._sq60 = self._sq120 = 0
        self._sd20 = self._sd60 = self._sd120 = 0
        self._sdq20 = self._sdq60 = self._sdq120 = 0
        self._sp60 = 0

    @property
    def ready(self) -> bool:
        """Whether the last value pushed has a full feature row (``WARMUP`` values before it)."""
        return self.t >= WARMUP

    def _rescale(self, k: int) -> None:
        # Only ever grows; rare (a value with finer resolution than any before).
        a, b = k - self.scale, 2 * (k - self.scale)
        self._x = [v << a for v in self._x]
        self._d = [v << a for v in self._d]
        self._x2 = [v << b for v in self._x2]
        self._d2 = [v << b for v in self._d2]
        self._p = [v << b for v in self._p]
        self._sx20, self._sx60, self._sx120 = self._sx20 << a, self._sx60 << a, self._sx120 << a
        self._sd20, self._sd60, self._sd120 = self._sd20 << a, self._sd60 << a, self._sd120 << a
        self._sq20, self._sq60, self._sq120 = self._sq20 << b, self._sq60 << b, self._sq120 << b
        self._sdq20, self._sdq60, self._sdq120 = self._sdq20 << b, self._sdq60 << b, self._sdq120 << b
        self._sp60 <<= b
        self.scale = k

    def push(self, s: float) -> tuple[list[float], float] | None:
        """Add the next spread value; once ready, return (features 0–23 clipped, ``v120``)."""
        if not math.isfinite(s):
            raise ValueError(f"spread value {s!r} is not finite")
        num, den = s.as_integer_ratio()
        k = den.bit_length() - 1
        if k > self.scale:
            self._rescale(k)
        f = self.scale
        x = num << (f - k)
        t = self.t = self.t + 1
        i = t & _MASK
        i1 = (t - 1) & _MASK
        xs, x2s, dd, d2s, ps = self._x, self._x2, self._d, self._d2, self._p
        if t == 0:
            d, dsf = 0, 0.0
        else:
            d, dsf = x - xs[i1], s - self._s[i1]
        xx, dq, p = x * x, d * d, d * dd[i1]
        self._s[i] = s
        xs[i], x2s[i], dd[i], d2s[i], ps[i] = x, xx, d, dq, p
        j20, j60, j120 = (t - 20) & _MASK, (t - 60) & _MASK, (t - 120) & _MASK
        sx20 = self._sx20 = self._sx20 + x - xs[j20]
        sx60 = self._sx60 = self._sx60 + x - xs[j60]
        sx120 = self._sx120 = self._sx120 + x - xs[j120]
        sq20 = self._sq20 = self._sq20 + xx - x2s[j20]
        sq60 = self._sq60 = self._sq60 + xx - x2s[j60]
        sq120 = self._sq120 = self._sq120 + xx - x2s[j120]
        sd20 = self._sd20 = self._sd20 + d - dd[j20]
        sd60 = self._sd60 = self._sd60 + d - dd[j60]
        sd120 = self._sd120 = self._sd120 + d - dd[j120]
        sdq20 = self._sdq20 = self._sdq20 + dq - d2s[j20]
        sdq60 = self._sdq60 = self._sdq60 + dq - d2s[j60]
        sdq120 = self._sdq120 = self._sdq120 + dq - d2s[j120]
        sp60 = self._sp60 = self._sp60 + p - ps[j60]
        # z60 is needed for the lags and means of later rows, from t = WARMUP - 19 on.
        z60 = _z(60, x, sx60, sq60, f)
        zh, dsh = self._zh, self._dsh
        zh.append(z60)
        dsh.append(dsf)
        if len(zh) > 4 * _RING:
            del zh[:-_RING], dsh[:-_RING]
        if t < WARMUP:
            return None
        v20 = _std(20, sd20, sdq20, f)
        v120 = _std(120, sd120, sdq120, f)
        if v120 > EPS:
            rets = [v / v120 for v in dsh[-1:-6:-1]]
            vol_ratio = v20 / v120 - 1.0
            ss = self._s
            mom5 = (s - ss[(t - 5) & _MASK]) / (v120 * _SQRT5)
            mom20 = (s - ss[j20]) / (v120 * _SQRT20)
        else:
            rets = [0.0] * 5
            vol_ratio = mom5 = mom20 = 0.0
        # Lag-1 autocorrelation: a = d over the last 60 steps, b = a one step earlier.
        sb, sbq = sd60 - d + dd[j60], sdq60 - dq + d2s[j60]
        den = 3600 << 2 * f
        sa_std = math.sqrt((60 * sdq60 - sd60 * sd60) / den)
        sb_std = math.sqrt((60 * sbq - sb * sb) / den)
        flat = sa_std <= EPS or sb_std <= EPS
        autocorr = 0.0 if flat else ((60 * sp60 - sd60 * sb) / den) / (sa_std * sb_std)
        zlags = zh[-1:-21:-1]  # z60 now, 1, …, 19 steps back
        row = [
            *zlags[:10],
            *rets,
            _z(20, x, sx20, sq20, f),
            _z(120, x, sx120, sq120, f),
            vol_ratio,
            math.fsum(zlags[:5]) / 5.0,
            math.fsum(zlags) / 20.0,
            mom5,
            mom20,
            autocorr,
            abs(z60),
        ]
        return [CLIP if v > CLIP else -CLIP if v < -CLIP else v for v in row], v120


def _std(n: int, s1: int, s2: int, f: int) -> float:
    """Population std of ``n`` fixed-point values with sum ``s1`` and sum of squares ``s2``."""
    return math.sqrt((n * s2 - s1 * s1) / (n * n << 2 * f))


def _z(n: int, x: int, s1: int, s2: int, f: int) -> float:
    """(x − mean) / std over the window, with the deviation rounded once from exact integers."""
    std = math.sqrt((n * s2 - s1 * s1) / (n * n << 2 * f))
    if std <= EPS:
        return 0.0
    return ((n * x - s1) / (n << f)) / std


@dataclass(frozen=True)
class SpreadRows:
    """Whole-path features: ``market`` (n, 24) and ``vol`` (n,) = ``v120``; NaN before ``WARMUP``."""

    market: np.ndarray
    vol: np.ndarray


def spread_features(spread: np.ndarray) -> SpreadRows:
    """Features 0–23 and ``v120`` at every step of ``spread``, by the streaming kernel."""
    s = np.asarray(spread, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"a spread path must be 1-D, got shape {s.shape}")
    market = np.full((len(s), PATH_DIM), np.nan)
    vol = np.full(len(s), np.nan)
    kernel = SpreadKernel()
    for t, value in enumerate(s.tolist()):
        out = kernel.push(value)
        if out is not None:
            market[t], vol[t] = out
    return SpreadRows(market, vol)


def market_features(spread: np.ndarray) -> np.ndarray:
    """Features 0–23 for every step of ``spread``: shape (len, 24), NaN before ``WARMUP``."""
    return spread_features(spread).market


def sign(x: float) -> int:
    """-1, 0 or 1: the side of a position (``-0.0`` is flat)."""
    return (x > 0) - (x < 0)


def tail_features(
    position: float, spread: float, entry: float, held: int, vol: float, cost: float
) -> list[float]:
    """Features 24–27 from the position book (``entry``, ``held``) and ``v120``, clipped."""
    scale = vol if vol > EPS else 1.0
    unrealised = position * (spread - entry) / scale if position else 0.0
    holding = min(held / HOLD_CAP, 1.0)
    cost_vol = cost / vol if vol > EPS else 0.0
    return [_clip(position), _clip(unrealised), _clip(holding), _clip(cost_vol)]


def state_row(market_row: list[float] | np.ndarray, tail: list[float]) -> np.ndarray:
    """One float64 state of 28 features (both parts already clipped)."""
    return np.array([*market_row, *tail], dtype=np.float64)
