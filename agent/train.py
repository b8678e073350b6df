"""``python -m agent.train``: train the served ``SACActor`` with SAC on the pair
environment (synthetic, or a user's price file), track the run through
``MlflowTracker`` (a no-op unless ``MLFLOW_TRACKING_URI`` is set), and publish its
best checkpoint where the worker watches, only if it scores at least as well as
the model already served there."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.extras import require

require(__name__, "python -m agent.train", "train", ("torch", "tqdm"))
# Only once the extra is known to be there: the imports below need it.
import numpy as np
import torch

from agent.baselines import zscore_rule
from agent.checkpoint import CheckpointError, Metadata, save_checkpoint
from agent.contract import ContractError
from agent.data import PriceDataError
from agent.env import PairTradingEnv, ou_spread
from agent.heldout import DataError
from agent.publish import Gate
from agent.randomise import randomised_spreads
from agent.release import check as check_release
from agent.release import register_best
from agent.replay import ReplayBuffer
from agent.sac import SAC
from agent.train_config import DEFAULT_OUT, DESCRIPTION, ConfigError, TrainConfig, config_from_args
from agent.train_data import VALIDATION_SEED, plan
from agent.verdict import REFUSE
from agent.warmstart import behaviour_clone, restrict_inputs, rule_reference, rule_states
from agent.wfreport import FIXED, TUNED
from tracking import MlflowTracker

__all__ = [
    "DEFAULT_OUT",
    "DESCRIPTION",
    "VALIDATION_SEED",
    "Gate",
    "Result",
    "TrainConfig",
    "config_from_args",
    "main",
    "new_run_dir",
    "summary",
    "train",
]

logger = logging.getLogger(__name__)


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
    data_lines: list[str] = field(default_factory=list)  # what data the run used
    evaluate_args: str = ""  # what ``python -m agent.evaluate MODEL`` needs after MODEL
    held_out: str = "held-out synthetic paths"  # what agent.evaluate judges the model on
    register_note: str = ""  # what --register did, and why
    registered: bool | None = None  # with --register: whether a version was registered
    verdict: str = ""  # the one verdict on the model judged (agent.verdict), as agent.evaluate says it


def train(cfg: TrainConfig, progress: bool | None = None) -> Result:
    """Run SAC training; return where the checkpoints went and how good they are."""
    started = time.monotonic()
    torch.set_num_threads(cfg.threads)
    cfg.check()
    check_release(cfg)
    data = plan(cfg)
    writable(cfg.out.parent, "--out")
    writable(cfg.run_dir, "--run-dir")
    for line in data.lines:
        logger.info("%s", line)
    contract = data.contract
    env = PairTradingEnv(
        cfg.pair(cfg.episode_length, cfg.train_cost_multiplier, learning=True), source=data.train
    )
    synthetic = PairTradingEnv(env.config, source=randomised_spreads())
    # Scored before seeding: building the incumbent's actor draws from torch's
    # RNG, and a seed must give the same run whether or not a model is there.
    gate = Gate.at_start(cfg, env.state_dim, data.validate, contract)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    agent = SAC(env.state_dim, cfg.hyper())
    if restrict_inputs(agent.actor, cfg.input_names()):
        logger.info("the actor reads %d features: %s", len(cfg.input_names()), ", ".join(cfg.input_names()))
    reference = rule_reference(data.rule) if cfg.bc_weight > 0 else None
    if cfg.warm_start == "rule":
        source = data.train or (lambda r, n: ou_spread(env.config, r, n))
        states = rule_states(data.rule, source, env.config, 8, rng)
        behaviour_clone(agent.actor, states, data.rule, cfg.bc_steps, rng)
    buffer = ReplayBuffer(cfg.buffer_size, env.state_dim)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = new_run_dir(cfg.run_dir, f"sac-{stamp}-seed{cfg.seed}")
    best_path, final_path = run_dir / "best.pt", run_dir / "final.pt"
    warnings = list(data.warnings)
    for w in warnings:
        logger.warning("%s", w)
    if cfg.planned_updates(data.episode_steps) == 0:
        warnings.append(
            f"too short to learn: {cfg.episodes} episodes × {data.episode_steps or cfg.episode_length} steps "
            f"with --learning-starts {cfg.learning_starts} and --updates-per-step {cfg.updates_per_step} "
            "make not one SAC gradient step, so the policy stays "
            + ("the behaviour clone of the rule " if cfg.warm_start == "rule" else "as initialised ")
            + "(raise --episodes or lower --learning-starts)"
        )
        logger.warning("%s", warnings[-1])

    baseline = data.validate(zscore_rule())
    # The rules' validation figures, recorded with every checkpoint: the verdict (agent.verdict)
    # asks the policy to beat each of them where it was chosen.
    on_validation = {"flat": 0.0, FIXED: baseline.sharpe}
    if data.rule_sharpe is not None:
        on_validation[TUNED] = data.validate(
            zscore_rule(data.rule.entry, data.rule.exit, data.rule.lookback)
        ).sharpe
    params = {k: (str(v) if isinstance(v, Path | tuple) or v is None else v) for k, v in asdict(cfg).items()}
    tags = {
        "algo": "sac",
        "env_class": type(env).__name__,
        "data": "csv" if cfg.csv else "synthetic",
        "contract": contract.id,
    }
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
        stale = 0  # validations in a row without a new best

        def validate(episode: int, metrics: dict[str, float]) -> float:
            """Score the actor on the validation data; keep (and maybe publish) a new best."""
            nonlocal best, stale
            val = data.validate(agent.actor)
            metrics.update(
                {
                    "eval_reward": val.total_return,
                    "eval_sharpe": val.sharpe,
                    "eval_turnover": val.turnover,
                    "eval_max_drawdown": val.max_drawdown,
                }
            )
            stale += 1
            if val.sharpe > best:
                best, stale = val.sharpe, 0
                extra: dict[str, Any] = {
                    "eval_metric": "validation_sharpe",
                    "seed": cfg.seed,
                    "baseline_zscore_sharpe": baseline.sharpe,
                    "validation": {"policy": val.sharpe, **on_validation},
                    "rule": asdict(data.rule),
                    **({"split": data.split} if data.split else {}),
                }
                if gate.incumbent is not None:
                    extra["incumbent_eval_sharpe"] = gate.incumbent
                meta = Metadata(run_id=tracker.run_id, episodes=episode, eval_score=val.sharpe, extra=extra)
                save_checkpoint(agent.actor, best_path, meta, contract=contract)
                if gate.admits(val.sharpe):
                    # the worker hot-reloads this
                    save_checkpoint(agent.actor, cfg.out, meta, contract=contract)
                    gate.published = True
            return val.sharpe

        if cfg.warm_start == "rule":
            # The clone is a candidate too: SAC has to beat it on validation to replace it.
            start_metrics: dict[str, float] = {}
            validate(0, start_metrics)
            tracker.log_metrics(start_metrics, step=0)
            history.append({"episode": 0, **start_metrics})
        episode = 0
        for episode in range(1, cfg.episodes + 1):
            on = synthetic if episode <= cfg.synthetic_episodes else env
            state = on.reset(int(rng.integers(0, 10_000)))
            ep_reward, ep_turnover, done = 0.0, 0.0, False
            while not done:
                if total_steps < cfg.learning_starts:
                    action = rng.uniform(-1.0, 1.0, size=1)
                else:
                    action = agent.act(state[None, :])[0]
                next_state, reward, done, info = on.step(float(action[0]))
                buffer.add(state, action, reward * cfg.reward_scale, next_state, False)
                state = next_state
                ep_reward += reward
                ep_turnover += info["turnover"]
                total_steps += 1
                if total_steps >= cfg.learning_starts:
                    update_credit += cfg.updates_per_step
                    while update_credit >= 1.0:
                        last_losses = agent.update(buffer.sample(rng, cfg.batch_size), reference)
                        update_credit -= 1.0
                        updates += 1
            metrics = {"train_reward": ep_reward, "train_turnover": ep_turnover / on.length, **last_losses}
            out_of_time = cfg.max_minutes > 0 and time.monotonic() - started > cfg.max_minutes * 60
            if episode % cfg.eval_every == 0 or episode == cfg.episodes or out_of_time:
                sharpe = validate(episode, metrics)
                bar.set_postfix(
                    reward=f"{ep_reward:+.3f}",
                    sharpe=f"{sharpe:.2f}",
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
            if cfg.patience and stale >= cfg.patience:
                logger.info(
                    "stopping after %d episodes: no better validation in %d validations (--patience)",
                    episode,
                    stale,
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
                f"(--learning-starts {cfg.learning_starts}): "
                + (
                    "this model is the behaviour clone of the rule, SAC did not train it"
                    if cfg.warm_start == "rule"
                    else "this model is untrained"
                )
            )
            logger.warning("%s", warnings[-1])
        note = gate.note(best)
        logger.log(logging.INFO if gate.published else logging.WARNING, "%s", note)
        tracker.log_metrics({"best_eval_sharpe": best}, step=episode)
        tracker.set_tag("published", str(gate.published).lower())
        tracker.log_artifact(cfg.out if gate.published else best_path)
        tracker.log_artifact(final_path)
    # Read once the run has ended: a slow server may have started it after training began.
    run_id = tracker.run_id
    judged = cfg.out if gate.published else best_path
    said = verdict_of(judged, data.evaluate_args)
    # After the run has ended: a registration that waits on MLflow never holds the run open.
    registered = None
    if cfg.register:  # the version registered is best.pt: its own verdict, which promotion reads
        own = said if judged == best_path else verdict_of(best_path, data.evaluate_args)
        registered = register_best(cfg, best_path, run_id, best, baseline.sharpe, own)
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
        data_lines=data.lines,
        evaluate_args=data.evaluate_args,
        held_out=data.held_out,
        register_note=registered.note if registered else "",
        verdict=said,
        registered=None if registered is None else registered.version is not None,
    )


def verdict_of(model: Path, evaluate_args: str) -> str:
    """The verdict ``python -m agent.evaluate MODEL EVALUATE_ARGS`` prints on the model."""
    from agent.evaluate import judge

    try:
        return str(judge(model, shlex.split(evaluate_args))["verdict"])
    except (CheckpointError, ContractError, PriceDataError, DataError) as exc:
        return f"{REFUSE}it could not be judged ({exc})"


def writable(folder: Path, flag: str) -> None:
    """Check, before any training, that ``folder`` could be made and written (rather than failing
    at the first checkpoint, minutes in); makes nothing: a temporary file in the nearest folder
    that exists is written and removed."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, f"{probe} is not a folder")
        fd, name = tempfile.mkstemp(prefix=".statpair-write-check-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot write in {folder} ({exc.strerror or exc})") from None


def new_run_dir(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``name-2``, ``name-3``… when taken. Made
    exclusively (``mkdir`` without ``exist_ok``): two runs started in the same second
    with the same seed get a folder each and never overwrite each other's checkpoints."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1001):
        folder = parent / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: {name} and 999 numbered folders beside it are taken")


def chosen_at(result: Result) -> str:
    """Which checkpoint validation chose: the clone of the rule, or SAC's at episode N."""
    scored = [h for h in result.history if "eval_sharpe" in h]
    best = max(scored, key=lambda h: h["eval_sharpe"], default=None)  # the first of equals, as kept
    if best is None:
        return ""
    if int(best["episode"]) == 0:
        return "; chosen: the behaviour clone of the rule (episode 0): no SAC checkpoint validated better"
    return f"; chosen at episode {int(best['episode'])}"


def summary(result: Result) -> str:
    """The closing lines ``python -m agent.train`` prints."""
    lines = [
        f"trained {result.episodes} episodes in {result.seconds:.0f} s ({result.steps} environment steps, "
        f"{result.updates} gradient updates); best validation Sharpe {result.best_sharpe:.2f} "
        f"(the z-score rule at fixed thresholds, ±2σ/±0.5σ on z60: {result.baseline_sharpe:.2f} on the "
        f"same validation data){chosen_at(result)}",
        *result.data_lines,
    ]
    lines += [f"warning: {w}" for w in result.warnings]
    lines.append(result.publish_note)
    if result.register_note:
        lines.append(result.register_note)
    lines.append(f"this run: best {result.best_path}, final {result.final_path}")
    judged = shlex.quote(str(result.out if result.published else result.best_path))
    lines.append(f"evaluate it on {result.held_out}: python -m agent.evaluate {judged}{result.evaluate_args}")
    if result.verdict:
        lines.append(result.verdict)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(argv, model_dir=os.environ.get("MODEL_DIR"))
    try:
        result = train(cfg)
    except (ConfigError, PriceDataError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    if result.registered is False:
        return 1  # --register asked for a version and none was made: the note above says why
    return 0


if __name__ == "__main__":
    from agent.command import run as run_command

    raise SystemExit(run_command(main))
