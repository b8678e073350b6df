"""The trainer's levers on a price file: no row of the test window influences the model or
its selection, a seed gives the same run with every lever on, the warm start clones the rule
(tuned on the episodes' rows only), domain randomisation and patience do what they say."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.baselines import RuleParams, zscore_rule
from agent.checkpoint import load_checkpoint
from agent.env import PairConfig, PairData, PairTradingEnv
from agent.randomise import randomised_spreads
from agent.train import TrainConfig, train
from agent.train_data import plan
from agent.walkforward import tune_rule
from agent.warmstart import behaviour_clone, rule_reference, rule_states

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "tests" / "data" / "sp500_nasdaq_2017_2018.csv"
HEADER, *ROWS = REAL.read_text().splitlines()
TEST = 351  # the first test row of the file at train fraction 0.7 (502 usable rows)


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def levers(tmp_path: Path, csv: Path, **kw: Any) -> TrainConfig:
    """A tiny run on ``csv`` with every lever on."""
    values: dict[str, Any] = {
        "csv": csv,
        "episodes": 3,
        "episode_length": 60,
        "learning_starts": 40,
        "batch_size": 16,
        "eval_every": 1,
        "hidden": (8, 8),
        "critic_hidden": (8, 8),
        "synthetic_episodes": 1,
        "warm_start": "rule",
        "bc_steps": 30,
        "bc_weight": 0.5,
        "risk_aversion": 2.0,
        "out": tmp_path / "m.pt",
        "run_dir": tmp_path / "runs",
        "quiet": True,
    }
    values.update(kw)
    return TrainConfig(**values)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).actor.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_no_row_of_the_test_window_influences_training_or_selection(tmp_path: Path) -> None:
    # Another future: every test-window price scaled by its own random factor.
    rng = np.random.default_rng(7)
    other = []
    for i, row in enumerate(ROWS):
        day, a, b = row.split(",")
        if i >= TEST:
            a, b = f"{float(a) * rng.uniform(0.5, 2):.4f}", f"{float(b) * rng.uniform(0.5, 2):.4f}"
        other.append(f"{day},{a},{b}")
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join([HEADER, *other]) + "\n")
    assert changed.read_bytes() != REAL.read_bytes()
    runs = [
        train(levers(tmp_path / name, csv), progress=False) for name, csv in (("a", REAL), ("b", changed))
    ]
    assert _same(_weights(runs[0].best_path), _weights(runs[1].best_path))
    assert _same(_weights(runs[0].final_path), _weights(runs[1].final_path))
    assert runs[0].best_sharpe == runs[1].best_sharpe and runs[0].history == runs[1].history
    meta = [load_checkpoint(r.best_path).metadata for r in runs]
    assert meta[0]["episodes"] == meta[1]["episodes"] and meta[0]["rule"] == meta[1]["rule"]
    assert meta[0]["split"] == {"train": [0, 281], "validation": [281, TEST], "test": [TEST, 502]}
    # The contracts differ only in what names the file: the spread and the split are the same.
    c0, c1 = (load_checkpoint(r.best_path).contract for r in runs)
    assert c0.spread == c1.spread and c0.data.train_rows == c1.data.train_rows == (0, TEST)
    assert c0.id != c1.id


@pytest.mark.slow
def test_a_seed_gives_the_same_run_with_every_lever_on(tmp_path: Path) -> None:
    runs = [
        train(levers(tmp_path / name, REAL, seed=seed), progress=False)
        for name, seed in (("a", 3), ("b", 3), ("c", 4))
    ]
    a, b, c = (_weights(r.final_path) for r in runs)
    assert _same(a, b) and not _same(a, c)
    assert runs[0].history == runs[1].history and runs[0].updates == runs[1].updates > 0
    assert any(h.get("bc_gap", 0) > 0 for h in runs[0].history)  # the regulariser was on


def test_the_warm_start_clones_the_rule_tuned_on_the_episodes_rows(tmp_path: Path) -> None:
    p = plan(levers(tmp_path, REAL))
    data = PairData.from_csv(REAL)
    assert p.rule == tune_rule(data.spread, 281, 0.0005).params  # the episodes' rows: validation unseen
    rng = np.random.default_rng(0)
    assert p.train is not None
    states = rule_states(p.rule, p.train, PairConfig(episode_length=100), 4, rng)
    torch.manual_seed(0)
    from agent.actor import SACActor

    actor = SACActor(hidden=(32, 32))
    behaviour_clone(actor, states, p.rule, 600, rng)
    x = torch.from_numpy(states)
    rule = zscore_rule(p.rule.entry, p.rule.exit, p.rule.lookback)
    with torch.no_grad():
        cloned = actor.deterministic(x)[:, 0].numpy()
    assert np.array_equal(rule_reference(p.rule)(x)[:, 0].numpy(), rule(states))  # one rule, two forms
    assert np.mean(np.abs(cloned - rule(states)) < 0.5) > 0.9


def test_the_clone_is_a_candidate_and_patience_stops_early(tmp_path: Path) -> None:
    result = train(levers(tmp_path, REAL, episodes=30, patience=2, synthetic_episodes=0), progress=False)
    assert result.history[0]["episode"] == 0 and "eval_sharpe" in result.history[0]
    evals = [h for h in result.history if "eval_sharpe" in h]
    best_at = max(range(len(evals)), key=lambda i: evals[i]["eval_sharpe"])
    assert result.episodes < 30 and len(evals) - 1 - best_at == 2  # two validations without a new best


def test_domain_randomisation_draws_a_new_market_for_every_path() -> None:
    source = randomised_spreads()
    rng = np.random.default_rng(0)
    paths = [source(rng, 600) for _ in range(40)]
    vols = [float(np.std(np.diff(p))) for p in paths]
    assert all(len(p) == 600 and np.all(np.isfinite(p)) for p in paths)
    assert max(vols) / min(vols) > 3  # volatilities spread over the range, not one market
    again = randomised_spreads()(np.random.default_rng(0), 600)
    assert np.array_equal(again, paths[0])


def test_the_lever_flags_are_checked() -> None:
    from agent.train_config import ConfigError

    for bad, message in (
        ({"warm_start": "zscore"}, "--warm-start must be none or rule"),
        ({"bc_weight": -1.0}, "--bc-weight must be a number at least 0"),
        ({"bc_weight": float("nan")}, "--bc-weight must be a number at least 0"),
        ({"patience": -1}, "--patience must be at least 0"),
        ({"synthetic_episodes": -2}, "--synthetic-episodes must be at least 0"),
        ({"risk_aversion": -0.5}, "--risk-aversion must be a number at least 0"),
        ({"risk_aversion": float("inf")}, "--risk-aversion must be a number at least 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            dataclasses.replace(TrainConfig(), **bad).check()
    assert RuleParams().label() == "entry ±2σ, exit ±0.5σ, z over 60 steps"


def test_fewer_inputs_keep_the_dropped_features_weights_at_zero(tmp_path: Path) -> None:
    keep = "z60_lag0,z120,position,unrealised"
    result = train(levers(tmp_path, REAL, inputs=keep), progress=False)
    actor = load_checkpoint(result.final_path).actor
    first = actor.shared[0].weight.detach()
    from agent.features import NAMES

    kept = [NAMES.index(n) for n in keep.split(",")]
    dropped = [i for i in range(len(NAMES)) if i not in kept]
    assert torch.count_nonzero(first[:, dropped]) == 0 and torch.count_nonzero(first[:, kept]) > 0
    assert actor.state_dim == 28  # the served actor still takes the whole feature set
    from agent.train_config import ConfigError

    with pytest.raises(ConfigError, match="--inputs: no feature 'z30'"):
        TrainConfig(inputs="z60_lag0,z30").check()


def test_risk_aversion_charges_the_squared_pnl_while_learning_and_nothing_else() -> None:
    cfg = TrainConfig(risk_aversion=3.0)
    learning, judging = cfg.pair(64, 10.0, learning=True), cfg.pair(64)
    assert learning.risk_aversion == 3.0 and judging.risk_aversion == 0.0
    rewards = {}
    for name, config in (("learning", learning), ("plain", dataclasses.replace(learning, risk_aversion=0.0))):
        env = PairTradingEnv(config, seed=5)
        env.reset(seed=5)
        out = []
        for action in (1.0, 1.0, -0.5, 0.0, 0.7):
            _, reward, _, info = env.step(action)
            out.append((reward, info["pnl"], info["cost"]))
        rewards[name] = out
    for (r, pnl, cost), (plain, _, _) in zip(rewards["learning"], rewards["plain"], strict=True):
        assert plain == pnl - cost
        assert r == pytest.approx(pnl - cost - 3.0 * pnl * pnl, abs=1e-15)
    assert any(
        r < plain for (r, _, _), (plain, _, _) in zip(rewards["learning"], rewards["plain"], strict=True)
    )
