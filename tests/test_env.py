"""Environment invariants: shapes, reward arithmetic, costs, no look-ahead, the
position features at reset, and the cost the `cost_vol` feature reports."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.baselines import flat, zscore_rule
from agent.data import PriceDataError
from agent.env import PairConfig, PairData, PairTradingEnv, ou_spread, synthetic_prices
from agent.evaluate import compare, scores
from agent.features import HOLD_CAP, NAMES, STATE_DIM, WARMUP, spread_features


def test_shapes_and_episode_length() -> None:
    env = PairTradingEnv(PairConfig(episode_length=50), seed=1)
    s = env.reset()
    assert s.shape == (STATE_DIM,) == (28,) and s.dtype == np.float32 and len(NAMES) == 28
    steps = 0
    done = False
    while not done:
        s, r, done, info = env.step(0.3)
        steps += 1
        assert s.shape == (28,) and np.isfinite(s).all() and np.abs(s).max() <= 10
        assert np.isfinite(r) and set(info) >= {"pnl", "cost", "position", "turnover", "z"}
    assert steps == 50


def test_reward_arithmetic_on_a_hand_computed_path() -> None:
    path = np.zeros(WARMUP + 5)
    path[WARMUP:] = [0.00, 0.02, 0.01, 0.01, -0.02]
    cfg = PairConfig(episode_length=4, cost=0.001)
    env = PairTradingEnv(cfg, source=lambda rng, n: path)
    env.reset(0)
    rewards = [env.step(a)[1] for a in (1.0, 1.0, -0.5, 0.0)]
    want = [
        1.0 * 0.02 - 0.001 * 1.0,  # open long: gains the +0.02 move, pays one unit of cost
        1.0 * -0.01,  # hold: no cost
        -0.5 * 0.00 - 0.001 * 1.5,  # flip to -0.5: 1.5 units traded
        0.0 * -0.03 - 0.001 * 0.5,  # close
    ]
    assert rewards == pytest.approx(want, abs=1e-12)


def test_costs_only_on_position_changes() -> None:
    env = PairTradingEnv(PairConfig(episode_length=30, cost=0.01), seed=3)
    env.reset()
    costs = [env.step(a)[3]["cost"] for a in [0.5] * 10 + [-0.5] * 10 + [-0.5] * 10]
    assert costs[0] == pytest.approx(0.005) and costs[10] == pytest.approx(0.01)
    assert sum(costs) == pytest.approx(0.015)


def test_actions_are_clipped_and_position_is_observed() -> None:
    env = PairTradingEnv(PairConfig(episode_length=5), seed=0)
    env.reset()
    s, _, _, info = env.step(7.0)
    assert info["position"] == 1.0 and s[NAMES.index("position")] == 1.0


def test_seeded_paths_repeat() -> None:
    a = ou_spread(PairConfig(), np.random.default_rng(5), 500)
    b = ou_spread(PairConfig(), np.random.default_rng(5), 500)
    assert np.array_equal(a, b) and np.std(a) > 0


def test_position_features_at_reset_and_the_feature_cost() -> None:
    cfg = PairConfig(episode_length=20, cost=0.003, feature_cost=0.001)
    env = PairTradingEnv(cfg, seed=2)
    s = env.reset()
    vol = spread_features(env.spread).vol[WARMUP]
    # Flat, and flat since before the episode: holding is saturated, not an episode clock.
    assert s[NAMES.index("position")] == 0.0 and s[NAMES.index("unrealised")] == 0.0
    assert s[NAMES.index("holding")] == 1.0 and env.held == HOLD_CAP
    # cost_vol reports the feature cost (the contract's), while the reward charges ``cost``.
    assert s[NAMES.index("cost_vol")] == np.float32(0.001 / vol)
    assert env.step(1.0)[3]["cost"] == pytest.approx(0.003)
    assert cfg.contract().cost == 0.001 and PairConfig(cost=0.003).contract().cost == 0.003
    for _ in range(3):
        s = env.step(1.0)[0]
    assert s[NAMES.index("holding")] == np.float32(0.04)


def test_features_use_only_the_past() -> None:
    s = ou_spread(PairConfig(), np.random.default_rng(0), 600)
    full = spread_features(s).market
    for t in (WARMUP, 300, 599):
        assert np.array_equal(spread_features(s[: t + 1]).market[t], full[t])


def _write_csv(path: Path, a: np.ndarray, b: np.ndarray) -> Path:
    day = date(2001, 1, 1)
    lines = ["date,KO,PEP"] + [
        f"{day + timedelta(days=i)},{x:.6f},{y:.6f}" for i, (x, y) in enumerate(zip(a, b, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_hedge_ratio_has_no_look_ahead(tmp_path: Path) -> None:
    a, b = synthetic_prices(PairConfig(hedge_ratio=1.3, regime_prob=0.0), np.random.default_rng(1), 1000)
    data = PairData.from_csv(_write_csv(tmp_path / "p.csv", a, b), train_fraction=0.7)
    assert data.n_train == 700 and data.hedge_ratio == pytest.approx(1.3, abs=0.25)
    # Rewrite the held-out 30 %: nothing estimated or seen in training may change.
    a2 = a.copy()
    a2[700:] *= np.exp(np.linspace(0, 1.5, 300))
    other = PairData.from_csv(_write_csv(tmp_path / "q.csv", a2, b), train_fraction=0.7)
    assert other.hedge_ratio == data.hedge_ratio and other.intercept == data.intercept
    assert np.array_equal(other.spread[:700], data.spread[:700])
    for seed in range(5):
        p1 = data.source(held_out=False)(np.random.default_rng(seed), 300)
        p2 = other.source(held_out=False)(np.random.default_rng(seed), 300)
        assert np.array_equal(p1, p2)
    held = data.source(held_out=True)(np.random.default_rng(0), 200)
    start = int(np.flatnonzero(np.isclose(data.spread, held[0]))[0])
    assert start + 200 > 700  # held-out episodes end in the held-out part


def test_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "one.csv").write_text("date,KO\n2020-01-02,1\n")
    with pytest.raises(PriceDataError, match=r"one\.csv: need two numeric price columns"):
        PairData.from_csv(tmp_path / "one.csv")
    with pytest.raises(PriceDataError, match="prices: 100 usable rows are too few: need at least 272"):
        PairData.from_prices(np.ones(100), np.ones(100))
    with pytest.raises(PriceDataError, match="finite and positive"):
        PairData.from_prices(-np.ones(1000), np.ones(1000))
    with pytest.raises(PriceDataError, match="price B is constant over the training window"):
        PairData.from_prices(np.linspace(1, 2, 1000), np.ones(1000))


def test_zscore_rule_enters_holds_and_exits() -> None:
    rule = zscore_rule(2.0, 0.5)
    states = np.zeros((5, 28), np.float32)
    z, pos = NAMES.index("z60_lag0"), NAMES.index("position")
    states[:, z] = [2.5, -2.5, 1.0, 1.0, 0.2]
    states[:, pos] = [0.0, 0.0, -1.0, 0.0, 1.0]
    assert list(rule(states)) == [-1.0, 1.0, -1.0, 0.0, 0.0]


def test_scores_and_baselines_on_same_paths() -> None:
    sc = scores(np.array([[0.01, -0.005, 0.02]]), np.array([[1.0, 0.0, 0.0]]))
    assert sc.total_return == pytest.approx(0.025) and sc.max_drawdown == pytest.approx(0.005)
    assert sc.turnover == pytest.approx(1 / 3) and sc.steps == 3
    out = compare({"zscore": zscore_rule(), "flat": flat}, 4, PairConfig(episode_length=300))
    assert out["flat"].sharpe == 0.0 and out["flat"].turnover == 0.0
    assert out["zscore"].turnover > 0 and out["zscore"].steps == 1200
