"""``python -m agent.train``: train the served ``SACActor`` with SAC on the
pair environment, track the run through ``MlflowTracker`` (a no-op unless
``MLFLOW_TRACKING_URI`` is set), and write checkpoints atomically where the
worker watches for them."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import typing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.baselines import zscore_rule
from agent.checkpoint import Metadata, save_checkpoint
from agent.env import PairConfig, PairData, PairTradingEnv, PathSource
from agent.evaluate import Scores, actor_policy, compare
from agent.replay import ReplayBuffer
from agent.sac import SAC, SACHyper
from tracking import MlflowTracker

logger = logging.getLogger(__name__)

VALIDATION_SEED = 20_000  # checkpoint selection; the held-out test seeds (agent.evaluate) are 10 000+


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a training run; each is a ``--flag`` of ``python -m agent.train``."""

    episodes: int = _f(300, "training episodes")
    episode_length: int = _f(256, "steps per training episode")
    seed: int = _f(0, "seed of torch, the environments and the replay sampling")
    out: Path = _f(
        Path("models/policy.pt"),
        "checkpoint the worker serves (default $MODEL_DIR/policy.pt); "
        "rewritten atomically whenever the validation Sharpe improves",
    )
    run_dir: Path = _f(
        Path("runs"), "folder for this run's best.pt and final.pt (in a timestamped subfolder)"
    )
    hidden: tuple[int, ...] = _f((64, 64), "actor hidden layer sizes")
    critic_hidden: tuple[int, ...] = _f((128, 128), "critic hidden layer sizes")
    actor_lr: float = _f(3e-4, "actor learning rate")
    critic_lr: float = _f(3e-4, "critic learning rate")
    alpha_lr: float = _f(3e-4, "entropy temperature learning rate")
    gamma: float = _f(0.95, "discount factor")
    tau: float = _f(0.005, "Polyak averaging factor of the target critics")
    init_alpha: float = _f(0.1, "initial entropy temperature (tuned automatically)")
    batch_size: int = _f(256, "minibatch size")
    buffer_size: int = _f(200_000, "replay buffer capacity (transitions)")
    learning_starts: int = _f(2_000, "random-action steps before learning")
    updates_per_step: float = _f(1.0, "gradient updates per environment step (may be fractional)")
    reward_scale: float = _f(100.0, "multiplier of the PnL reward for learning")
    eval_every: int = _f(10, "validate every this many episodes")
    eval_episodes: int = _f(16, "validation paths")
    eval_length: int = _f(512, "steps per validation path")
    threads: int = _f(1, "torch threads")
    max_minutes: float = _f(0.0, "stop early after this many minutes (0 = no limit)")
    half_life: float = _f(PairConfig.half_life, "spread half-life in steps (synthetic pair)")
    sigma: float = _f(PairConfig.sigma, "spread innovation std per step (synthetic pair)")
    regime_prob: float = _f(PairConfig.regime_prob, "chance of a regime shift per step (synthetic pair)")
    cost: float = _f(PairConfig.cost, "cost per unit of position change")
    train_cost_multiplier: float = _f(
        3.0,
        "the cost charged while learning, as a multiple of --cost "
        "(above 1 discourages churn; validation uses --cost)",
    )
    csv: Path | None = _f(None, "train on this CSV of two price columns instead of the synthetic pair")
    csv_columns: str | None = _f(None, "the CSV's two price columns, as A,B (default: first two numeric)")
    train_fraction: float = _f(0.7, "CSV rows used for training; the rest is held out")
    experiment: str = _f("statpair-sac", "MLflow experiment (MLFLOW_EXPERIMENT_NAME overrides)")
    quiet: bool = _f(False, "no progress bar")

    def pair(self, length: int, cost_multiplier: float = 1.0) -> PairConfig:
        return PairConfig(
            episode_length=length,
            half_life=self.half_life,
            sigma=self.sigma,
            regime_prob=self.regime_prob,
            cost=self.cost * cost_multiplier,
        )

    def hyper(self) -> SACHyper:
        return SACHyper(
            hidden=self.hidden,
            critic_hidden=self.critic_hidden,
            actor_lr=self.actor_lr,
            critic_lr=self.critic_lr,
            alpha_lr=self.alpha_lr,
            gamma=self.gamma,
            tau=self.tau,
            init_alpha=self.init_alpha,
        )


@dataclass
class Result:
    best_path: Path
    final_path: Path
    out: Path
    best_sharpe: float
    baseline_sharpe: float
    episodes: int
    seconds: float
    run_id: str | None
    history: list[dict[str, float]]


def _sources(cfg: TrainConfig) -> tuple[PathSource | None, PathSource | None]:
    if cfg.csv is None:
        return None, None
    cols = tuple(cfg.csv_columns.split(",")) if cfg.csv_columns else None
    data = PairData.from_csv(cfg.csv, cols, cfg.train_fraction)  # type: ignore[arg-type]
    logger.info(
        "pair from %s: hedge ratio %.4f estimated on %d training rows",
        cfg.csv,
        data.hedge_ratio,
        data.n_train,
    )
    return data.source(held_out=False), data.source(held_out=True)


def train(cfg: TrainConfig, progress: bool | None = None) -> Result:
    """Run SAC training; return where the checkpoints went and how good they are."""
    started = time.monotonic()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_source, val_source = _sources(cfg)
    env = PairTradingEnv(cfg.pair(cfg.episode_length, cfg.train_cost_multiplier), source=train_source)
    val_config = cfg.pair(cfg.eval_length)
    agent = SAC(env.state_dim, cfg.hyper())
    buffer = ReplayBuffer(cfg.buffer_size, env.state_dim)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = cfg.run_dir / f"sac-{stamp}-seed{cfg.seed}"
    best_path, final_path = run_dir / "best.pt", run_dir / "final.pt"

    def validate() -> Scores:
        return compare(
            {"policy": actor_policy(agent.actor)}, cfg.eval_episodes, val_config, val_source, VALIDATION_SEED
        )["policy"]

    baseline = compare({"zscore": zscore_rule()}, cfg.eval_episodes, val_config, val_source, VALIDATION_SEED)[
        "zscore"
    ]
    params = {k: (str(v) if isinstance(v, Path | tuple) or v is None else v) for k, v in asdict(cfg).items()}
    tags = {"algo": "sac", "env_class": type(env).__name__, "data": "csv" if cfg.csv else "synthetic"}
    show = (not cfg.quiet and sys.stderr.isatty()) if progress is None else progress
    from tqdm import tqdm

    history: list[dict[str, float]] = []
    best = -float("inf")
    total_steps = 0
    update_credit = 0.0
    last_losses: dict[str, float] = {}
    with MlflowTracker(
        cfg.experiment, run_name=run_dir.name, params={"config": params}, tags=tags
    ) as tracker:
        tracker.log_metrics({"baseline_zscore_sharpe": baseline.sharpe}, step=0)
        bar = tqdm(total=cfg.episodes, disable=not show, unit="ep", dynamic_ncols=True)
        episode = 0
        for episode in range(1, cfg.episodes + 1):
            state = env.reset(int(rng.integers(0, 10_000)))
            ep_reward, ep_turnover, done = 0.0, 0.0, False
            while not done:
                if total_steps < cfg.learning_starts:
                    action = rng.uniform(-1.0, 1.0, size=1)
                else:
                    action = agent.act(state[None, :])[0]
                next_state, reward, done, info = env.step(float(action[0]))
                buffer.add(state, action, reward * cfg.reward_scale, next_state, False)
                state = next_state
                ep_reward += reward
                ep_turnover += info["turnover"]
                total_steps += 1
                if total_steps >= cfg.learning_starts:
                    update_credit += cfg.updates_per_step
                    while update_credit >= 1.0:
                        last_losses = agent.update(buffer.sample(rng, cfg.batch_size))
                        update_credit -= 1.0
            metrics = {"train_reward": ep_reward, "train_turnover": ep_turnover / env.length, **last_losses}
            out_of_time = cfg.max_minutes > 0 and time.monotonic() - started > cfg.max_minutes * 60
            if episode % cfg.eval_every == 0 or episode == cfg.episodes or out_of_time:
                val = validate()
                metrics.update(
                    {
                        "eval_reward": val.total_return,
                        "eval_sharpe": val.sharpe,
                        "eval_turnover": val.turnover,
                        "eval_max_drawdown": val.max_drawdown,
                    }
                )
                if val.sharpe > best:
                    best = val.sharpe
                    meta = Metadata(
                        run_id=tracker.run_id,
                        episodes=episode,
                        eval_score=val.sharpe,
                        extra={
                            "eval_metric": "validation_sharpe",
                            "seed": cfg.seed,
                            "baseline_zscore_sharpe": baseline.sharpe,
                        },
                    )
                    save_checkpoint(agent.actor, best_path, meta)
                    save_checkpoint(agent.actor, cfg.out, meta)  # the worker hot-reloads this
                bar.set_postfix(
                    reward=f"{ep_reward:+.3f}",
                    sharpe=f"{val.sharpe:.2f}",
                    best=f"{best:.2f}",
                    zscore=f"{baseline.sharpe:.2f}",
                )
            tracker.log_metrics(metrics, step=episode)
            history.append({"episode": episode, **metrics})
            bar.update(1)
            if out_of_time:
                logger.info(
                    "stopping after %d episodes: --max-minutes %.1f reached", episode, cfg.max_minutes
                )
                break
        bar.close()
        save_checkpoint(
            agent.actor,
            final_path,
            Metadata(run_id=tracker.run_id, episodes=episode, extra={"seed": cfg.seed}),
        )
        tracker.log_metrics({"best_eval_sharpe": best}, step=episode)
        tracker.log_artifact(cfg.out)
        tracker.log_artifact(final_path)
        run_id = tracker.run_id
    return Result(
        best_path,
        final_path,
        cfg.out,
        best,
        baseline.sharpe,
        episode,
        time.monotonic() - started,
        run_id,
        history,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.train", description=__doc__.splitlines()[0])
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if kind is bool:
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.name in {"hidden", "critic_hidden"}:
            p.add_argument(
                flag,
                type=lambda s: tuple(int(x) for x in s.split(",")),
                default=f.default,
                help=help_text + ", comma-separated",
            )
        else:
            base = {int: int, float: float, str: str, Path: Path}.get(kind)
            if base is None:  # Optional[...]
                args = [a for a in typing.get_args(kind) if a is not type(None)]
                base = args[0]
            p.add_argument(flag, type=base, default=f.default, help=help_text)
    return p


def config_from_args(argv: list[str] | None = None, model_dir: str | None = None) -> TrainConfig:
    args = _parser().parse_args(argv)
    values = vars(args)
    if "--out" not in (argv if argv is not None else sys.argv[1:]) and model_dir:
        values["out"] = Path(model_dir) / "policy.pt"
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(argv, model_dir=os.environ.get("MODEL_DIR"))
    result = train(cfg)
    print(
        f"trained {result.episodes} episodes in {result.seconds:.0f} s; best validation Sharpe "
        f"{result.best_sharpe:.2f} (z-score rule {result.baseline_sharpe:.2f} on the same paths)"
    )
    print(f"serving checkpoint: {result.out}\nbest: {result.best_path}\nfinal: {result.final_path}")
    print(f"judge it on held-out paths: python -m agent.evaluate {result.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
