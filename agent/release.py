"""``python -m agent.train --register NAME``: when a run ends, score its best
checkpoint and the z-score rule on the held-out data (the synthetic held-out
seeds, or the price file's held-out rows, as ``agent.evaluate`` does) and register
it as a new version of NAME in MLflow's model registry, tagged with those scores.
MLflow unset, down or refusing never fails the run: the note says what happened."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.baselines import zscore_rule
from agent.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from agent.contract import ContractError
from agent.data import PriceDataError
from agent.heldout import DataError, held_out
from agent.scoring import EVAL_SEED, Scores, actor_policy, compare, compare_walk
from agent.train_config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from tracking.registry import Registered

logger = logging.getLogger(__name__)


def check(cfg: TrainConfig) -> None:
    """Before training: a name the registry takes, and a server to register on."""
    if cfg.register is None:
        return
    from tracking.registry import check_name  # no mlflow: that comes with the registration

    try:
        check_name(cfg.register)
    except ValueError as exc:
        raise ConfigError(f"--register: {exc}") from None
    if not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        raise ConfigError("--register needs MLFLOW_TRACKING_URI: the MLflow server that holds the registry")


def held_out_scores(cfg: TrainConfig, checkpoint: Path, ck: Checkpoint) -> tuple[Scores, Scores, str]:
    """The model's and the z-score rule's scores on the same held-out data, and what that was."""
    if cfg.csv is None:
        config = cfg.pair(cfg.eval_length)
        out = compare(
            {"policy": actor_policy(ck.actor), "zscore": zscore_rule()},
            cfg.eval_episodes,
            config,
            None,
            EVAL_SEED,
        )
        what = f"{cfg.eval_episodes} synthetic paths × {cfg.eval_length} steps, seeds from {EVAL_SEED}"
        return out["policy"], out["zscore"], what
    h = held_out(checkpoint, ck.contract, cfg.csv, cfg.columns)
    traces = compare_walk(
        {"policy": ck.actor, "zscore": zscore_rule()}, h.data, ck.contract.cost, feature_cost=ck.contract.cost
    )
    return (
        traces["policy"].scores,
        traces["zscore"].scores,
        f"the held-out rows of {cfg.csv.name}, {h.span()}",
    )


def register_best(
    cfg: TrainConfig, best_path: Path, run_id: str | None, val_sharpe: float, val_rule: float, said: str = ""
) -> Registered:
    """Register ``best_path`` as a new version of ``cfg.register``; the outcome, with the
    note for the summary."""
    from tracking.registry import Registered, register

    assert cfg.register is not None
    try:
        ck = load_checkpoint(best_path)
    except CheckpointError as exc:
        return Registered(cfg.register, None, f"registration as {cfg.register} skipped: {exc}")
    tags: dict[str, object] = {
        "verdict": said,  # the one verdict (agent.verdict), as the run's summary said it: promotion reads it
        "contract_id": ck.contract.id,
        "val_sharpe": f"{val_sharpe:.6g}",
        "val_zscore_sharpe": f"{val_rule:.6g}",
    }
    try:
        model, rule, what = held_out_scores(cfg, best_path, ck)
        tags.update(
            {
                "test_sharpe": f"{model.sharpe:.6g}",
                "test_zscore_sharpe": f"{rule.sharpe:.6g}",
                "test_data": what,
            }
        )
        logger.info("held-out Sharpe %.2f, z-score rule %.2f, on %s", model.sharpe, rule.sharpe, what)
    except (ContractError, PriceDataError, DataError) as exc:
        # Registered all the same: without held-out scores, promotion needs --force.
        logger.warning("not scored on held-out data (%s): registering without test scores", exc)
    return register(cfg.register, best_path, run_id, tags, patient=True)
