"""``python -m agent.train``: train the served ``SACActor`` with SAC on the pair
environment, track the run through ``MlflowTracker`` (a no-op unless
``MLFLOW_TRACKING_URI`` is set), and publish its best checkpoint where the worker
watches, only if it scores at least as well as the model already served there."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.actor import DEFAULT_HIDDEN, SACActor
from agent.baselines import zscore_rule
from agent.checkpoint import CheckpointError, Metadata, load_checkpoint, save_checkpoint
from agent.contract import PairContract
from agent.env import PairConfig, PairData, PairTradingEnv, PathSource
from agent.evaluate import Scores, actor_policy, compare
from agent.replay import ReplayBuffer
from agent.sac import SAC, SACHyper
from tracking import MlflowTracker

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Train the pair-trading policy with soft actor-critic and publish it to the checkpoint "
    "the worker serves, unless the model already there scores better on the same validation paths."
)
VALIDATION_SEED = 20_000  # checkpoint selection; the held-out test seeds (agent.evaluate) are 10 000+
DEFAULT_OUT = Path("models/policy.pt")  # without MODEL_DIR


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a training run; each is a ``--flag`` of ``python -m agent.train``."""

    episodes: int = _f(300, "training episodes")
    episode_length: int = _f(256, "steps per training episode")
    seed: int = _f(0, "seed of torch, the environments and the replay sampling")
    out: Path = field(
        default=DEFAULT_OUT,
        metadata={
            "help": "the checkpoint the worker serves: rewritten atomically by each new best of this "
            "run that scores at least as well on the validation paths as the model already there"
        },
    )
    force: bool = _f(False, "publish to --out even when the model already there scores better")
    run_dir: Path = field(
        default=Path("runs"),
        metadata={"help": "folder for this run's best.pt and final.pt (in a timestamped subfolder)"},
    )
    hidden: tuple[int, ...] = _f(DEFAULT_HIDDEN, "actor hidden layer sizes")
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
    csv: Path | None = field(
        default=None,
        metadata={"help": "train on this CSV of two price columns instead of the synthetic pair"},
    )
    csv_columns: str | None = _f(None, "the CSV's two price columns, as A,B (default: the first two numeric)")
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
            # cost_vol (feature 27) shows the evaluated cost, however much learning charges.
            feature_cost=self.cost,
        )

    def hyper(self) -> SACHyper:
        """The SAC hyper-parameters: every ``SACHyper`` field this config also has."""
        ours = {f.name for f in dataclasses.fields(self)}
        return SACHyper(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(SACHyper) if f.name in ours}
        )

    def planned_updates(self) -> int:
        """Gradient updates a full run makes (CSV episodes may be shorter, so at most this)."""
        steps = self.episodes * self.episode_length
        return int(max(0, steps - self.learning_starts + 1) * self.updates_per_step)


@dataclass
class Result:
    best_path: Path
    final_path: Path
    out: Path  # the serving checkpoint, written only when ``published``
    best_sharpe: float
    baseline_sharpe: float
    episodes: int
    seconds: float
    run_id: str | None
    history: list[dict[str, float]]
    published: bool = False
    incumbent_sharpe: float | None = None  # the served model's score at the start, when it had one
    publish_note: str = ""  # what happened to --out, and why
    steps: int = 0  # environment steps
    updates: int = 0  # gradient updates
    warnings: list[str] = field(default_factory=list)


def _two_columns(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    names = [c.strip() for c in text.split(",")]
    if len(names) != 2 or not all(names):
        raise ValueError(f"--csv-columns must name two columns as A,B, got {text!r}")
    return names[0], names[1]


def _sources(cfg: TrainConfig) -> tuple[PathSource | None, PathSource | None, PairContract]:
    """Where training and validation paths come from, and the contract they make."""
    if cfg.csv is None:
        return None, None, cfg.pair(cfg.episode_length).contract()
    data = PairData.from_csv(cfg.csv, _two_columns(cfg.csv_columns), cfg.train_fraction)
    logger.info(
        "pair from %s: hedge ratio %.4f estimated on %d training rows",
        cfg.csv,
        data.hedge_ratio,
        data.n_train,
    )
    return data.source(held_out=False), data.source(held_out=True), data.contract(cfg.cost)


@dataclass
class Gate:
    """Who may write the serving file: the score of the model found there at the start
    (None: there was none, or it could not be loaded) and whether this run wrote it."""

    out: Path
    incumbent: float | None
    force: bool = False
    published: bool = False

    @classmethod
    def at_start(cls, cfg: TrainConfig, state_dim: int, validate: Callable[[SACActor], Scores]) -> Gate:
        if not cfg.out.exists():
            logger.info("no model at %s yet: this run publishes its best validated model there", cfg.out)
            return cls(cfg.out, None, cfg.force)
        try:
            incumbent = load_checkpoint(cfg.out, state_dim=state_dim)
        except CheckpointError as exc:
            logger.warning(
                "the model at %s cannot be loaded (%s): treating it as absent", cfg.out, exc.reason
            )
            return cls(cfg.out, None, cfg.force)
        sharpe = validate(incumbent.actor).sharpe
        then = "--force replaces it anyway" if cfg.force else "only a model scoring at least that replaces it"
        logger.info("the model at %s scores validation Sharpe %.2f: %s", cfg.out, sharpe, then)
        return cls(cfg.out, sharpe, cfg.force)

    def admits(self, sharpe: float) -> bool:
        return self.force or self.incumbent is None or sharpe >= self.incumbent

    def note(self, best: float) -> str:
        """What happened to the serving file, and why."""
        if not self.published:
            if self.incumbent is None:
                return f"not published to {self.out}: the run validated no model"
            return (
                f"not published to {self.out}: this run's best validation Sharpe {best:.2f} is below "
                f"{self.incumbent:.2f}, the score of the model already there on the same paths; "
                "its checkpoints stay in its run folder (--force publishes anyway)"
            )
        if self.incumbent is None:
            return f"published to {self.out}"
        how, than = ("", "at least") if best >= self.incumbent else (" with --force", "below")
        return (
            f"published to {self.out}{how}: validation Sharpe {best:.2f}, "
            f"{than} the {self.incumbent:.2f} of the model it replaced"
        )


def train(cfg: TrainConfig, progress: bool | None = None) -> Result:
    """Run SAC training; return where the checkpoints went and how good they are."""
    started = time.monotonic()
    torch.set_num_threads(cfg.threads)
    train_source, val_source, contract = _sources(cfg)
    env = PairTradingEnv(cfg.pair(cfg.episode_length, cfg.train_cost_multiplier), source=train_source)
    val_config = cfg.pair(cfg.eval_length)

    def validate(actor: SACActor) -> Scores:
        return compare(
            {"policy": actor_policy(actor)}, cfg.eval_episodes, val_config, val_source, VALIDATION_SEED
        )["policy"]

    # Scored before seeding: building the incumbent's actor draws from torch's
    # RNG, and a seed must give the same run whether or not a model is there.
    gate = Gate.at_start(cfg, env.state_dim, validate)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    agent = SAC(env.state_dim, cfg.hyper())
    buffer = ReplayBuffer(cfg.buffer_size, env.state_dim)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = cfg.run_dir / f"sac-{stamp}-seed{cfg.seed}"
    best_path, final_path = run_dir / "best.pt", run_dir / "final.pt"
    warnings: list[str] = []
    if cfg.planned_updates() == 0:
        warnings.append(
            f"too short to learn: {cfg.episodes} episodes × {cfg.episode_length} steps with "
            f"--learning-starts {cfg.learning_starts} and --updates-per-step {cfg.updates_per_step} "
            "make not one gradient step, so the policy stays as initialised "
            "(raise --episodes or lower --learning-starts)"
        )
        logger.warning("%s", warnings[-1])

    baseline = compare({"zscore": zscore_rule()}, cfg.eval_episodes, val_config, val_source, VALIDATION_SEED)[
        "zscore"
    ]
    params = {k: (str(v) if isinstance(v, Path | tuple) or v is None else v) for k, v in asdict(cfg).items()}
    tags = {"algo": "sac", "env_class": type(env).__name__, "data": "csv" if cfg.csv else "synthetic"}
    show = (not cfg.quiet and sys.stderr.isatty()) if progress is None else progress
    # tqdm ships no type hints, and types-tqdm is not in the dev extra.
    from tqdm import tqdm  # type: ignore[import-untyped]

    history: list[dict[str, float]] = []
    best = -float("inf")
    total_steps = updates = 0
    update_credit = 0.0
    last_losses: dict[str, float] = {}
    with MlflowTracker(
        cfg.experiment, run_name=run_dir.name, params={"config": params}, tags=tags
    ) as tracker:
        tracker.log_metrics({"baseline_zscore_sharpe": baseline.sharpe}, step=0)
        if gate.incumbent is not None:
            tracker.log_metrics({"incumbent_eval_sharpe": gate.incumbent}, step=0)
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
                        updates += 1
            metrics = {"train_reward": ep_reward, "train_turnover": ep_turnover / env.length, **last_losses}
            out_of_time = cfg.max_minutes > 0 and time.monotonic() - started > cfg.max_minutes * 60
            if episode % cfg.eval_every == 0 or episode == cfg.episodes or out_of_time:
                val = validate(agent.actor)
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
                    extra: dict[str, Any] = {
                        "eval_metric": "validation_sharpe",
                        "seed": cfg.seed,
                        "baseline_zscore_sharpe": baseline.sharpe,
                    }
                    if gate.incumbent is not None:
                        extra["incumbent_eval_sharpe"] = gate.incumbent
                    meta = Metadata(
                        run_id=tracker.run_id, episodes=episode, eval_score=val.sharpe, extra=extra
                    )
                    save_checkpoint(agent.actor, best_path, meta, contract=contract)
                    if gate.admits(val.sharpe):
                        # the worker hot-reloads this
                        save_checkpoint(agent.actor, cfg.out, meta, contract=contract)
                        gate.published = True
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
            contract=contract,
        )
        if updates == 0:
            warnings.append(
                f"not one gradient step in {total_steps} environment steps "
                f"(--learning-starts {cfg.learning_starts}): this model is untrained"
            )
            logger.warning("%s", warnings[-1])
        note = gate.note(best)
        logger.log(logging.INFO if gate.published else logging.WARNING, "%s", note)
        tracker.log_metrics({"best_eval_sharpe": best}, step=episode)
        tracker.set_tag("published", str(gate.published).lower())
        tracker.log_artifact(cfg.out if gate.published else best_path)
        tracker.log_artifact(final_path)
        run_id = tracker.run_id
    return Result(
        best_path=best_path,
        final_path=final_path,
        out=cfg.out,
        best_sharpe=best,
        baseline_sharpe=baseline.sharpe,
        episodes=episode,
        seconds=time.monotonic() - started,
        run_id=run_id,
        history=history,
        published=gate.published,
        incumbent_sharpe=gate.incumbent,
        publish_note=note,
        steps=total_steps,
        updates=updates,
        warnings=warnings,
    )


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 64,64, got {text!r}")
    return sizes


def _columns_flag(text: str) -> str:
    try:
        _two_columns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected two column names as A,B, got {text!r}") from exc
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.train", description=DESCRIPTION)
    hints, defaults = typing.get_type_hints(TrainConfig), TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind, text, default = hints[f.name], f.metadata["help"], getattr(defaults, f.name)
        if kind is bool:
            p.add_argument(flag, action="store_true", help=text)
        elif f.name == "out":
            # No argparse default: config_from_args tells "not given" (MODEL_DIR decides)
            # from any spelling of the flag (--out X, --out=X, an abbreviation).
            p.add_argument(
                flag,
                type=Path,
                default=None,
                metavar="PATH",
                help=f"{text} (default: $MODEL_DIR/policy.pt, or {DEFAULT_OUT} when MODEL_DIR is unset)",
            )
        elif kind == tuple[int, ...]:
            shown = ",".join(str(h) for h in default)
            p.add_argument(
                flag, type=_sizes, default=default, help=f"{text}, comma-separated (default: {shown})"
            )
        else:
            parse: Callable[[str], Any]
            if f.name == "csv_columns":
                parse = _columns_flag
            elif kind in (int, float, str, Path):
                parse = kind
            else:  # X | None
                parse = next(a for a in typing.get_args(kind) if a is not type(None))
            shown = "" if default is None else f" (default: {default})"
            p.add_argument(flag, type=parse, default=default, help=text + shown)
    return p


def config_from_args(argv: list[str] | None = None, model_dir: str | None = None) -> TrainConfig:
    values = vars(_parser().parse_args(argv))
    if values["out"] is None:
        values["out"] = Path(model_dir) / "policy.pt" if model_dir else DEFAULT_OUT
    return TrainConfig(**values)


def summary(result: Result) -> str:
    """The closing lines ``python -m agent.train`` prints."""
    lines = [
        f"trained {result.episodes} episodes in {result.seconds:.0f} s ({result.steps} environment steps, "
        f"{result.updates} gradient updates); best validation Sharpe {result.best_sharpe:.2f} "
        f"(z-score rule {result.baseline_sharpe:.2f} on the same paths)"
    ]
    lines += [f"warning: {w}" for w in result.warnings]
    lines.append(result.publish_note)
    lines.append(f"this run: best {result.best_path}, final {result.final_path}")
    judged = result.out if result.published else result.best_path
    lines.append(f"judge it on held-out paths: python -m agent.evaluate {judged}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(argv, model_dir=os.environ.get("MODEL_DIR"))
    print(summary(train(cfg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
