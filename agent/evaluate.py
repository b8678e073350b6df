"""Judge a policy on held-out paths against the z-score rule and flat.

``python -m agent.evaluate MODEL`` prints annualised Sharpe, total return, max
drawdown and turnover for each policy on the same held-out environment seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from agent.actor import SACActor
from agent.baselines import Policy, flat, zscore_rule
from agent.env import PairConfig, PairData, PairTradingEnv, PathSource

STEPS_PER_YEAR = 252
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


def actor_policy(actor: SACActor) -> Policy:
    def policy(states: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            actions: np.ndarray = actor.deterministic(torch.as_tensor(states, dtype=torch.float32)).numpy()
        return actions[:, 0]

    return policy


def make_envs(n: int, config: PairConfig, source: PathSource | None = None) -> list[PairTradingEnv]:
    return [PairTradingEnv(config, source=source) for _ in range(n)]


def compare(
    policies: dict[str, Policy],
    episodes: int,
    config: PairConfig,
    source: PathSource | None = None,
    first_seed: int = EVAL_SEED,
) -> dict[str, Scores]:
    """Every policy on the same held-out paths."""
    seeds = list(range(first_seed, first_seed + episodes))
    out = {}
    for name, policy in policies.items():
        out[name] = scores(*rollout(policy, make_envs(episodes, config, source), seeds))
    return out


def main(argv: list[str] | None = None) -> int:
    from agent.checkpoint import CheckpointError, load_checkpoint

    p = argparse.ArgumentParser(prog="python -m agent.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="a checkpoint written by python -m agent.train")
    p.add_argument("--episodes", type=int, default=64, help="held-out paths (default 64)")
    p.add_argument("--episode-length", type=int, default=1024, help="steps per path (default 1024)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"first held-out seed (default {EVAL_SEED})")
    p.add_argument("--entry", type=float, default=2.0, help="z-score rule: enter beyond ±entry σ")
    p.add_argument("--exit", type=float, default=0.5, help="z-score rule: exit inside ±exit σ")
    p.add_argument("--cost", type=float, default=PairConfig.cost, help="cost per unit position change")
    p.add_argument("--half-life", type=float, default=PairConfig.half_life)
    p.add_argument("--csv", type=Path, default=None, help="evaluate on the held-out part of this pair CSV")
    p.add_argument("--columns", default=None, help="the CSV's two price columns, A,B")
    p.add_argument("--train-fraction", type=float, default=0.7)
    p.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = p.parse_args(argv)
    try:
        ck = load_checkpoint(args.model)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = PairConfig(episode_length=args.episode_length, cost=args.cost, half_life=args.half_life)
    source = None
    if args.csv:
        cols = tuple(args.columns.split(",")) if args.columns else None
        source = PairData.from_csv(args.csv, cols, args.train_fraction).source(held_out=True)
    result = compare(
        {"policy": actor_policy(ck.actor), "zscore": zscore_rule(args.entry, args.exit), "flat": flat},
        args.episodes,
        config,
        source,
        args.seed,
    )
    print(
        f"{args.model}: {args.episodes} held-out paths × {args.episode_length} steps, "
        f"seeds {args.seed}…{args.seed + args.episodes - 1}, cost {args.cost}"
    )
    for name, sc in result.items():
        print(sc.row(name))
    if args.json:
        args.json.write_text(json.dumps({k: asdict(v) for k, v in result.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
