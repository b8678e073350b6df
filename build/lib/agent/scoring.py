"""Scoring policies: per-step PnL into Sharpe, return, drawdown and turnover; random
episodes on synthetic paths; and the one contiguous walk forward over a price
file's held-out rows that a backtest is, step by step (``walk_forward``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from agent.baselines import Policy
from agent.env import PairConfig, PairData, PairTradingEnv, PathSource
from agent.features import WARMUP

if TYPE_CHECKING:
    from agent.actor import SACActor

STEPS_PER_YEAR = 252  # the Sharpe ratio is annualised as if a step were a trading day
EVAL_SEED = 10_000  # held-out seeds start here; training uses seeds below it


@dataclass(frozen=True)
class Scores:
    sharpe: float  # annualised: mean/std of per-step PnL over all paths × √252
    total_return: float  # a path's summed net PnL (log-return units), mean over paths
    max_drawdown: float  # a path's largest fall of cumulative PnL from its peak, mean over paths
    turnover: float  # mean |position change| per step
    steps: int

    def row(self, name: str) -> str:
        return (
            f"{name:<8} sharpe={self.sharpe:6.2f}  return={self.total_return:7.4f}  "
            f"max_dd={self.max_drawdown:6.4f}  turnover={self.turnover:6.3f}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores(pnl: np.ndarray, turnover: np.ndarray) -> Scores:
    """Scores of per-step net PnL and turnover, each shaped (paths, steps)."""
    pnl = np.atleast_2d(np.asarray(pnl, dtype=np.float64))
    std = pnl.std()
    sharpe = float(pnl.mean() / std * math.sqrt(STEPS_PER_YEAR)) if std > 0 else 0.0
    cum = np.cumsum(pnl, axis=1)
    peak = np.maximum.accumulate(np.concatenate([np.zeros((len(cum), 1)), cum], axis=1), axis=1)[:, 1:]
    return Scores(
        sharpe,
        float(cum[:, -1].mean()),
        float((peak - cum).max(axis=1).mean()),
        float(np.mean(turnover)),
        int(pnl.size),
    )


def actor_policy(actor: SACActor) -> Policy:
    """The actor's deterministic action as a batched policy (imports torch when called)."""
    import torch

    def policy(states: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            actions: np.ndarray = actor.deterministic(torch.as_tensor(states, dtype=torch.float32)).numpy()
        return actions[:, 0]

    return policy


def as_policy(policy: Policy | SACActor) -> Policy:
    """A batched policy from a policy or an actor (anything with ``deterministic``)."""
    if hasattr(policy, "deterministic"):
        return actor_policy(cast("SACActor", policy))
    return policy


def rollout(policy: Policy, envs: list[PairTradingEnv], seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``policy`` on every env in lockstep (one batched call a step).

    Returns per-step net PnL and turnover, each shaped (paths, steps)."""
    states = np.stack([env.reset(seed) for env, seed in zip(envs, seeds, strict=True)])
    pnl, turnover = [], []
    done = False
    while not done:
        actions = np.asarray(policy(states), dtype=np.float64).reshape(len(envs))
        out = [env.step(a) for env, a in zip(envs, actions, strict=True)]
        states = np.stack([o[0] for o in out])
        pnl.append([o[1] for o in out])
        turnover.append([o[3]["turnover"] for o in out])
        done = any(o[2] for o in out)
    return np.asarray(pnl).T, np.asarray(turnover).T


def make_envs(n: int, config: PairConfig, source: PathSource | None = None) -> list[PairTradingEnv]:
    return [PairTradingEnv(config, source=source) for _ in range(n)]


def compare(
    policies: Mapping[str, Policy],
    episodes: int,
    config: PairConfig,
    source: PathSource | None = None,
    first_seed: int = EVAL_SEED,
) -> dict[str, Scores]:
    """Every policy on the same random paths (seeds ``first_seed`` …)."""
    seeds = list(range(first_seed, first_seed + episodes))
    out = {}
    for name, policy in policies.items():
        out[name] = scores(*rollout(policy, make_envs(episodes, config, source), seeds))
    return out


@dataclass(frozen=True)
class Trace:
    """One walk forward, step by step. At step ``k`` the policy saw ``states[k]`` (the
    features of usable row ``rows[k]``, dated ``dates[k]``), answered ``actions[k]``,
    held ``positions[k]`` (the action clipped to [-1, 1]) from that row to the next,
    and earned ``pnl[k]``: the position times the spread's change, minus ``costs[k]``
    (the cost times ``turnover[k]``, the position's change at that row)."""

    rows: np.ndarray  # int, indices into the file's usable rows
    dates: tuple[str, ...] | None
    states: np.ndarray  # (steps, 28) float32, as the model received them
    actions: np.ndarray
    positions: np.ndarray
    pnl: np.ndarray  # net of costs
    costs: np.ndarray
    turnover: np.ndarray
    scores: Scores

    def __len__(self) -> int:
        return len(self.rows)


def walk_forward(
    policy: Policy | SACActor, data: PairData, cost: float, *, feature_cost: float | None = None
) -> Trace:
    """One contiguous walk over ``data``'s held-out rows, starting flat.

    The rows before the held-out part are the features' history (``WARMUP`` of
    them); every held-out row but the last is one step, taken once, in order; the
    last row only ends the last step. The states are the training environment's
    (``PairTradingEnv``), so equal to what a streaming strategy computes from the
    same prices and positions. ``feature_cost`` is the cost the ``cost_vol``
    feature reports (the model's contract's cost; default ``cost``)."""
    start, stop = data.held_out
    if start < WARMUP:
        raise ValueError(f"the held-out part starts at row {start}: {WARMUP} rows of history are needed")
    if stop - start < 2:
        raise ValueError(f"the held-out part has {stop - start} row(s): a walk forward needs at least 2")
    act = as_policy(policy)
    config = PairConfig(cost=cost, feature_cost=cost if feature_cost is None else feature_cost)
    env = PairTradingEnv(config, source=data.walk_forward())
    state = env.reset(0)
    states, actions, positions, pnl, costs, turnover = [], [], [], [], [], []
    done = False
    while not done:
        action = float(np.asarray(act(state[None, :]), dtype=np.float64).reshape(1)[0])
        states.append(state)
        actions.append(action)
        state, reward, done, info = env.step(action)
        positions.append(info["position"])
        pnl.append(reward)
        costs.append(info["cost"])
        turnover.append(info["turnover"])
    steps = len(actions)
    assert steps == data.walk_forward_steps == stop - start - 1
    rows = np.arange(start, start + steps)
    return Trace(
        rows=rows,
        dates=None if data.dates is None else tuple(data.dates[start : start + steps]),
        states=np.stack(states),
        actions=np.asarray(actions),
        positions=np.asarray(positions),
        pnl=np.asarray(pnl),
        costs=np.asarray(costs),
        turnover=np.asarray(turnover),
        scores=scores(np.asarray(pnl)[None, :], np.asarray(turnover)[None, :]),
    )


def compare_walk(
    policies: Mapping[str, Policy | SACActor],
    data: PairData,
    cost: float,
    *,
    feature_cost: float | None = None,
) -> dict[str, Trace]:
    """Every policy on the same walk forward, at the same cost."""
    return {
        name: walk_forward(policy, data, cost, feature_cost=feature_cost) for name, policy in policies.items()
    }
