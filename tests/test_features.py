"""Feature set 2: the kernel against an independent numpy reference, no
look-ahead, exactness (constant windows, no drift on long paths), and parity:
the streaming builder's states equal the environment's, stepped with actions."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.features as features
from agent.contract import PairContract
from agent.env import PairConfig, PairData, PairTradingEnv, synthetic_prices
from agent.features import CLIP, FEATURE_SET, NAMES, STATE_DIM, WARMUP, market_features, spread_features
from agent.streaming import FeatureBuilder, FeatureError
from bench.features import bench_features

REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


def _reference(spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features 0–23 and v120, recomputed per row from plain two-pass means and stds."""
    s = np.asarray(spread, dtype=np.float64)
    ds = np.diff(s, prepend=s[0])

    def std(w: np.ndarray) -> float:
        return float(np.sqrt(np.mean((w - w.mean()) ** 2)))

    def z(t: int, w: int) -> float:
        win = s[t - w + 1 : t + 1]
        sd = std(win)
        return float((s[t] - win.mean()) / sd) if sd > 1e-12 else 0.0

    z60 = {t: z(t, 60) for t in range(WARMUP - 19, len(s))}
    rows = np.full((len(s), 24), np.nan)
    vols = np.full(len(s), np.nan)
    for t in range(WARMUP, len(s)):
        v20, v120 = std(ds[t - 19 : t + 1]), std(ds[t - 119 : t + 1])
        flat = v120 <= 1e-12
        a, b = ds[t - 59 : t + 1], ds[t - 60 : t]
        sa, sb = std(a), std(b)
        ac = np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb) if sa > 1e-12 and sb > 1e-12 else 0.0
        row = [z60[t - k] for k in range(10)]
        row += [0.0 if flat else ds[t - k] / v120 for k in range(5)]
        row += [z(t, 20), z(t, 120), 0.0 if flat else v20 / v120 - 1.0]
        row += [np.mean([z60[t - k] for k in range(5)]), np.mean([z60[t - k] for k in range(20)])]
        row += [0.0 if flat else (s[t] - s[t - 5]) / (v120 * math.sqrt(5))]
        row += [0.0 if flat else (s[t] - s[t - 20]) / (v120 * math.sqrt(20)), ac, abs(z60[t])]
        rows[t] = np.clip(row, -CLIP, CLIP)
        vols[t] = v120
    return rows, vols


def _ou(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.zeros(n)
    for t in range(1, n):
        s[t] = 0.95 * s[t - 1] + 0.01 * rng.standard_normal()
    return s + 0.3


def test_names_version_and_documentation_table() -> None:
    assert FEATURE_SET == 2 and STATE_DIM == len(NAMES) == 28 and len(set(NAMES)) == 28
    assert "progress" not in NAMES and NAMES[27] == "cost_vol"
    assert not hasattr(features, "MARKET_DIM")
    doc = features.__doc__ or ""
    documented = set(re.findall(r"`([a-z0-9_]+)`", doc))
    assert (
        set(NAMES) - {f"z60_lag{i}" for i in range(1, 9)} - {f"ret_lag{i}" for i in range(1, 4)} <= documented
    )


@pytest.mark.parametrize("source", ["ou", "real"])
def test_kernel_matches_a_two_pass_numpy_reference(source: str) -> None:
    if source == "ou":
        s = _ou(900, 1)
        s[400:430] = s[400]  # a flat stretch: zero variance in the 20-step window
        s[600] += 0.5  # a jump
    else:
        s = PairData.from_csv(REAL).spread
    got = spread_features(s)
    want, vol = _reference(s)
    assert np.isnan(got.market[:WARMUP]).all() and np.isfinite(got.market[WARMUP:]).all()
    np.testing.assert_allclose(got.market[WARMUP:], want[WARMUP:], rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.vol[WARMUP:], vol[WARMUP:], rtol=1e-12, atol=0)


def test_rows_depend_on_their_trailing_window_only() -> None:
    s = _ou(700, 2)
    full = market_features(s)
    for t in (WARMUP, 300, 699):
        assert np.array_equal(market_features(s[: t + 1])[t], full[t])  # nothing from the future
    later = market_features(s[250:])  # a different start: same rows, bit for bit
    assert np.array_equal(later[WARMUP:], full[250 + WARMUP :])


def test_rows_do_not_depend_on_the_fixed_point_scale() -> None:
    s = _ou(600, 5)
    s[10] = 3e-30  # needs a much finer scale than the rest: every stored integer is shifted once
    kernel = features.SpreadKernel()
    for v in s[:200]:
        kernel.push(float(v))
    assert kernel.scale > 150
    fresh = features.SpreadKernel()
    assert fresh.scale == 64
    full = market_features(s)
    assert np.array_equal(market_features(s[300:])[WARMUP:], full[300 + WARMUP :])


def test_constant_prices_give_exactly_zero_variance_features() -> None:
    builder = FeatureBuilder(PairConfig().contract())
    state = builder.warm([37.25] * 300, [81.5] * 300)
    assert state is not None and builder.row64()[:24].tolist() == [0.0] * 24
    assert builder.row64()[NAMES.index("cost_vol")] == 0.0 and builder.row64()[NAMES.index("holding")] == 1.0
    # A constant stretch after a moving one: exactly zero, not rounding noise.
    s = np.concatenate([_ou(300, 3), np.full(200, 0.123456789)])
    rows = market_features(s)
    assert rows[-1].tolist() == [0.0] * 24


def _prices(
    rng: np.random.Generator, n: int, scale: float, jumps: int, flat: int
) -> tuple[np.ndarray, np.ndarray]:
    log_b = math.log(scale) + np.cumsum(rng.normal(0.0, 0.01, n))
    spread = np.cumsum(rng.normal(0.0, 0.005, n)) * 0.2
    for _ in range(jumps):  # huge jumps: a leg moves ×1000 or ÷1000 in one tick
        spread[int(rng.integers(1, n)) :] += rng.choice([-1.0, 1.0]) * math.log(1000.0)
    log_a = 0.8 * log_b + spread
    a, b = np.exp(log_a), np.exp(log_b)
    if flat:  # both prices constant for a stretch (and, when long, to the end)
        start = int(rng.integers(0, n - 1))
        a[start : start + flat], b[start : start + flat] = a[start], b[start]
    return a, b


def _env_and_builder_states(
    a: np.ndarray, b: np.ndarray, actions: np.ndarray, contract: PairContract
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step the environment with ``actions`` and feed the builder the same prices and positions."""
    path = contract.spread.path(a, b)
    steps = len(a) - WARMUP - 1
    env = PairTradingEnv(PairConfig(episode_length=steps, cost=contract.cost), source=lambda rng, n: path)
    builder = FeatureBuilder(contract)
    env32 = [env.reset(0)]
    env64 = [env.state64()]
    assert builder.warm(a[:WARMUP], b[:WARMUP]) is None and builder.needed == 1
    first = builder.update(a[WARMUP], b[WARMUP], 0.0)
    assert first is not None
    b32, b64 = [first], [builder.row64()]
    done = False
    for t in range(steps):
        assert not done
        state, _, done, info = env.step(float(actions[t]))
        env32.append(state)
        env64.append(env.state64())
        # The position held over the step ending at this tick is the action executed at the last one.
        got = builder.update(a[WARMUP + 1 + t], b[WARMUP + 1 + t], info["position"])
        assert got is not None
        b32.append(got)
        b64.append(builder.row64())
    assert done
    return np.array(env64), np.array(b64), np.array(env32), np.array(b32)


def _actions(rng: np.random.Generator, n: int) -> np.ndarray:
    # Holds, sign flips, flat spells, partial sizes and out-of-range targets (clipped).
    choices = np.array([-1.0, -0.5, -0.0, 0.0, 0.25, 1.0, 1.7, -3.0])
    acts = rng.choice(choices, size=n)
    hold = rng.random(n) < 0.6
    for t in range(1, n):
        if hold[t]:
            acts[t] = acts[t - 1]
    return acts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(WARMUP + 2, WARMUP + 260),
    scale=st.sampled_from([1e-8, 1e-3, 1.0, 50.0, 1e7]),
    jumps=st.integers(0, 3),
    flat=st.sampled_from([0, 25, 130, 10_000]),
)
def test_streaming_states_equal_the_environments(
    seed: int, n: int, scale: float, jumps: int, flat: int
) -> None:
    rng = np.random.default_rng(seed)
    a, b = _prices(rng, n, scale, jumps, flat)
    contract = PairConfig(cost=0.0007).contract()
    e64, b64, e32, b32 = _env_and_builder_states(a, b, _actions(rng, n), contract)
    assert np.abs(e64 - b64).max() <= 1e-6 and np.array_equal(e64, b64)  # exact, in fact
    assert e32.dtype == b32.dtype == np.float32 and np.array_equal(e32, b32)
    assert np.abs(b64).max() <= CLIP and np.isfinite(b64).all()


def test_ten_thousand_steps_do_not_drift() -> None:
    rng = np.random.default_rng(7)
    cfg = PairConfig(regime_prob=0.01)
    n = 10_000
    a, b = synthetic_prices(cfg, rng, n)
    a[5000:5100] *= 1e4  # a huge excursion in the middle of the run
    contract = cfg.contract()
    e64, b64, e32, b32 = _env_and_builder_states(a, b, _actions(rng, n), contract)
    identical = float(np.mean(e32 == b32))
    assert np.abs(e64 - b64).max() <= 1e-6 and identical >= 0.999
    assert identical == 1.0
    # The last 1 000 steps: against a kernel started fresh 1 140 ticks before the end …
    path = contract.spread.path(a, b)
    fresh = market_features(path[-(1000 + WARMUP) :])[WARMUP:]
    long_run = b64[-1000:, :24]
    assert np.array_equal(fresh, long_run)
    # … and against the independent two-pass reference.
    want, _ = _reference(path[-(1000 + WARMUP) :])
    np.testing.assert_allclose(long_run, want[WARMUP:], rtol=0, atol=1e-9)


def test_position_book_by_hand() -> None:
    contract = PairConfig(cost=0.001).contract()
    rng = np.random.default_rng(4)
    a, b = synthetic_prices(PairConfig(), rng, WARMUP + 6)
    builder = FeatureBuilder(contract)
    builder.warm(a[:WARMUP], b[:WARMUP])
    spreads = contract.spread.path(a, b)
    hold, unreal, pos = NAMES.index("holding"), NAMES.index("unrealised"), NAMES.index("position")
    builder.update(a[WARMUP], b[WARMUP], 0.0)
    assert builder.row64()[hold] == 1.0  # flat since before the first tick
    builder.update(a[WARMUP + 1], b[WARMUP + 1], 0.5)  # opened at the previous tick's spread
    assert builder.entry == spreads[WARMUP] and builder.held == 1
    row = builder.row64()
    vol = spread_features(spreads).vol[WARMUP + 1]
    assert row[pos] == 0.5 and row[hold] == 0.01
    assert row[unreal] == pytest.approx(0.5 * (spreads[WARMUP + 1] - spreads[WARMUP]) / vol, abs=1e-12)
    builder.update(a[WARMUP + 2], b[WARMUP + 2], 1.0)  # same sign: entry and count go on
    assert builder.entry == spreads[WARMUP] and builder.held == 2
    builder.update(a[WARMUP + 3], b[WARMUP + 3], -1.0)  # flip
    assert builder.entry == spreads[WARMUP + 2] and builder.held == 1
    builder.update(a[WARMUP + 4], b[WARMUP + 4], 0.0)  # close: unrealised is 0 when flat
    assert builder.row64()[unreal] == 0.0 and builder.held == 1
    assert builder.row64()[NAMES.index("cost_vol")] == pytest.approx(
        0.001 / spread_features(spreads).vol[WARMUP + 4]
    )


def test_builder_warm_up_and_errors() -> None:
    contract = PairConfig().contract()
    builder = FeatureBuilder(contract)
    assert builder.needed == WARMUP + 1 == builder.warmup + 1 and not builder.ready
    with pytest.raises(FeatureError, match="141 more tick"):
        builder.row64()
    a, b = synthetic_prices(PairConfig(), np.random.default_rng(0), WARMUP + 3)
    assert builder.warm(a[:WARMUP], b[:WARMUP]) is None and builder.needed == 1
    state = builder.update(a[WARMUP], b[WARMUP], 0.0)
    assert state is not None and state.shape == (28,) and state.dtype == np.float32 and builder.needed == 0
    assert np.array_equal(state, builder.row64().astype(np.float32))
    with pytest.raises(FeatureError, match=r"tick 142: prices must be positive and finite"):
        builder.update(-1.0, 3.0, 0.0)
    with pytest.raises(FeatureError, match="tick 142: position must be finite"):
        builder.update(1.0, 3.0, math.nan)
    with pytest.raises(FeatureError, match="differ"):
        builder.warm([1.0, 2.0], [1.0])
    builder.update(a[WARMUP + 1], b[WARMUP + 1], 5.0)  # clipped like the environment's actions
    assert builder.position == 1.0 and builder.row64()[NAMES.index("position")] == 1.0
    one_call = FeatureBuilder(contract).warm(a, b, [0.0] * (WARMUP + 2) + [1.0])
    assert one_call is not None and one_call[NAMES.index("position")] == 1.0
    builder.reset()
    assert builder.ticks == 0 and builder.needed == WARMUP + 1


def test_bench_features_reports_percentiles() -> None:
    out = bench_features(ticks=50, warmup=150)
    assert set(out) == {"ticks", "p50_us", "p95_us", "p99_us", "mean_us"} and out["ticks"] == 50
    assert 0 < out["p50_us"] <= out["p95_us"] <= out["p99_us"] and math.isfinite(out["mean_us"])


def test_walk_forward_on_the_real_file_equals_streaming_from_its_prices() -> None:
    """What a replay does: warm on the rows before the held-out part, then one tick per held-out row."""
    data = PairData.from_csv(REAL)
    table = data.table
    assert table is not None
    contract = data.contract(cost=0.0005)
    env = PairTradingEnv(PairConfig(cost=0.0005), source=data.walk_forward())
    first = env.reset(0)
    lo = data.n_train
    builder = FeatureBuilder(PairContract.from_json(contract.to_json()))
    assert builder.warm(table.a[lo - WARMUP : lo], table.b[lo - WARMUP : lo]) is None
    state = builder.update(table.a[lo], table.b[lo], 0.0)
    assert state is not None and np.array_equal(state, first)
    rng = np.random.default_rng(0)
    acts = _actions(rng, data.walk_forward_steps)
    for t, action in enumerate(acts):
        env_state, _, done, info = env.step(float(action))
        state = builder.update(table.a[lo + 1 + t], table.b[lo + 1 + t], info["position"])
        assert state is not None and np.array_equal(env.state64(), builder.row64())
        assert np.array_equal(env_state, state)
    assert done and builder.ticks == WARMUP + 1 + data.walk_forward_steps
