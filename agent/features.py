"""The 28 features of a market state (the serving ``state_dim``), computed from
a spread path with trailing windows only: feature row ``t`` uses the spread up
to and including ``t`` and never later.

| # | name | meaning |
|---|---|---|
| 0–9 | `z60_lag0` … `z60_lag9` | z-score of the spread against its trailing 60-step mean and std, now and at the 9 previous steps |
| 10–14 | `ret_lag0` … `ret_lag4` | spread change over one step, now and 4 steps back, in units of the 120-step volatility of changes |
| 15 | `z20` | z-score against the trailing 20-step mean and std |
| 16 | `z120` | z-score against the trailing 120-step mean and std |
| 17 | `vol_ratio` | 20-step over 120-step volatility of spread changes, minus 1 |
| 18 | `z60_mean5` | mean of `z60` over the last 5 steps |
| 19 | `z60_mean20` | mean of `z60` over the last 20 steps |
| 20 | `mom5` | spread change over 5 steps in units of 120-step volatility × √5 |
| 21 | `mom20` | spread change over 20 steps in units of 120-step volatility × √20 |
| 22 | `autocorr60` | lag-1 autocorrelation of spread changes over 60 steps (negative: mean-reverting) |
| 23 | `abs_z60` | absolute value of `z60` |
| 24 | `position` | the position held now, in [-1, 1] (short … long the spread) |
| 25 | `unrealised` | position × spread change since the position was opened, in 120-step volatility units |
| 26 | `holding` | steps the current position's sign has been held, / 100, capped at 1 |
| 27 | `progress` | fraction of the episode elapsed |

Every feature is clipped to [-10, 10].
"""

from __future__ import annotations

import numpy as np

STATE_DIM = 28
MARKET_DIM = 24  # features 0–23 depend on the path only
WARMUP = 140  # steps of history a feature row needs (120-step windows + lags)
CLIP = 10.0

NAMES = (
    [f"z60_lag{i}" for i in range(10)]
    + [f"ret_lag{i}" for i in range(5)]
    + [
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
        "progress",
    ]
)
assert len(NAMES) == STATE_DIM


def _rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean over ``w`` (NaN for the first w-1 entries)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    out = np.full(x.shape, np.nan)
    out[w - 1 :] = (c[w:] - c[:-w]) / w
    return out


def _rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    m = _rolling_mean(x, w)
    m2 = _rolling_mean(x * x, w)
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    if k == 0:
        return x
    out = np.full(x.shape, np.nan)
    out[k:] = x[:-k]
    return out


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / np.where(b > 1e-12, b, np.nan)
    return out


def market_features(spread: np.ndarray) -> np.ndarray:
    """Features 0–23 for every step of ``spread``: shape (len, 24), NaN-free after WARMUP."""
    s = np.asarray(spread, dtype=np.float64)
    ds = np.diff(s, prepend=s[0])
    z = {w: _safe_div(s - _rolling_mean(s, w), _rolling_std(s, w)) for w in (20, 60, 120)}
    v20, v120 = _rolling_std(ds, 20), _rolling_std(ds, 120)
    z60 = z[60]
    cols = [_lag(z60, k) for k in range(10)]
    cols += [_safe_div(_lag(ds, k), v120) for k in range(5)]
    cols += [z[20], z[120], _safe_div(v20, v120) - 1.0, _rolling_mean(z60, 5), _rolling_mean(z60, 20)]
    cols += [_safe_div(s - _lag(s, 5), v120 * np.sqrt(5)), _safe_div(s - _lag(s, 20), v120 * np.sqrt(20))]
    # lag-1 autocorrelation of changes over 60 steps
    a, b = ds, _lag(ds, 1)
    mab = _rolling_mean(a * b, 60) - _rolling_mean(a, 60) * _rolling_mean(b, 60)
    cols.append(_safe_div(mab, _rolling_std(a, 60) * _rolling_std(b, 60)))
    cols.append(np.abs(z60))
    out = np.stack(cols, axis=1)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)


def vol_scale(spread: np.ndarray) -> np.ndarray:
    """The 120-step volatility of spread changes at each step (used for `unrealised`)."""
    s = np.asarray(spread, dtype=np.float64)
    return _rolling_std(np.diff(s, prepend=s[0]), 120)


def state_vector(
    market_row: np.ndarray, position: float, unrealised: float, holding: float, progress: float
) -> np.ndarray:
    """One 28-feature float32 state."""
    tail = np.clip([position, unrealised, holding, progress], -CLIP, CLIP)
    return np.concatenate([market_row, tail]).astype(np.float32)
