"""Where a training run's paths come from: training episodes, the validation that
chooses its checkpoint, and the pair contract they make. On a price file the three
parts are disjoint in time: episodes from the start of the training window, validation
on its end (one walk forward), and the held-out rows left to ``agent.evaluate``."""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.baselines import DEFAULT_RULE, Policy, RuleParams
from agent.contract import PairContract, spread_formula
from agent.env import MIN_EPISODE, PairData, PathSource
from agent.features import WARMUP
from agent.scoring import Scores, as_policy, compare, walk_forward
from agent.train_config import TrainConfig
from agent.walkforward import tune_rule

if TYPE_CHECKING:
    from agent.actor import SACActor

logger = logging.getLogger(__name__)

VALIDATION_SEED = 20_000  # checkpoint selection; the held-out test seeds (agent.evaluate) are 10 000+

Validator = Callable[["Policy | SACActor"], Scores]


@dataclass(frozen=True)
class Plan:
    """A run's data: ``train`` draws episodes (None: the synthetic generator),
    ``validate`` scores a policy for checkpoint selection, ``lines`` say what was used."""

    train: PathSource | None
    validate: Validator
    contract: PairContract
    lines: list[str]
    evaluate_args: str = ""  # what ``python -m agent.evaluate MODEL`` needs after MODEL
    episode_steps: int | None = None  # steps of a training episode, when shorter than asked
    held_out: str = "held-out synthetic paths"  # what agent.evaluate judges the model on
    warnings: list[str] = field(default_factory=list)
    rule: RuleParams = DEFAULT_RULE  # the z-score rule tuned on the training episodes' rows
    rule_sharpe: float | None = None  # its Sharpe there (None: not tuned, the default rule)
    split: dict[str, list[int]] = field(default_factory=dict)  # train/validation/test rows, for the record


def plan(cfg: TrainConfig) -> Plan:
    """The run's data (``agent.data.PriceDataError`` for a bad price file)."""
    return _synthetic(cfg) if cfg.csv is None else _csv(cfg, cfg.csv)


def _synthetic(cfg: TrainConfig) -> Plan:
    val_config = cfg.pair(cfg.eval_length)
    seeds = f"seeds {VALIDATION_SEED}…{VALIDATION_SEED + cfg.eval_episodes - 1}"

    def validate(policy: Policy | SACActor) -> Scores:
        return compare({"policy": as_policy(policy)}, cfg.eval_episodes, val_config, None, VALIDATION_SEED)[
            "policy"
        ]

    line = (
        f"data: the synthetic pair (half-life {cfg.half_life:g}, sigma {cfg.sigma:g}, regime prob "
        f"{cfg.regime_prob:g}); checkpoint chosen on {cfg.eval_episodes} paths × {cfg.eval_length} "
        f"steps, {seeds}"
    )
    # agent.evaluate on the same held-out seeds and sizes as --register scores the model on.
    judged = f" --episodes {cfg.eval_episodes} --episode-length {cfg.eval_length}"
    return Plan(None, validate, cfg.pair(cfg.episode_length).contract(), [line], evaluate_args=judged)


def _csv(cfg: TrainConfig, path: Path) -> Plan:
    data = PairData.from_csv(path, cfg.column_names(), cfg.train_fraction)
    table = data.table
    assert table is not None
    n, total = data.n_train, len(data.spread)
    kept = round(n * cfg.validation_fraction)
    warnings = []
    if cfg.validation_fraction > 0 and (n - kept < WARMUP + MIN_EPISODE or kept < MIN_EPISODE):
        warnings.append(
            f"the training window ({n} rows) is too short to keep {cfg.validation_fraction:.0%} of it out of "
            f"training episodes for validation (that needs {WARMUP + MIN_EPISODE} rows for episodes and "
            f"{MIN_EPISODE} for validation): the checkpoint is chosen on the whole training window, in sample"
        )
        kept = 0
    fit = n - kept  # training episodes draw from rows [0, fit)
    window = data.spread[:n]
    dates = None if data.dates is None else data.dates[:n]
    # Validation walks rows [fit, n) (or, in sample, the whole window after its warm-up) once.
    val = dataclasses.replace(data, spread=window, n_train=fit if kept else WARMUP, dates=dates)

    def validate(policy: Policy | SACActor) -> Scores:
        return walk_forward(policy, val, cfg.cost, feature_cost=cfg.cost).scores

    def rows(lo: int, hi: int) -> str:
        lines = f"file lines {table.lines[lo]}–{table.lines[hi - 1]}"
        return f"{data.dates[lo]} … {data.dates[hi - 1]} ({lines})" if data.dates else lines

    a, b = table.columns
    chosen = f"validation {rows(fit, n)}" if kept else f"the whole window, in sample, {rows(WARMUP, n)}"
    lines = [
        f"data: {table.describe()}",
        f"spread: {spread_formula(a, b, data.hedge_ratio, data.intercept)}, fitted on the training window",
        f"training window: {rows(0, n)}; episodes from {rows(0, fit)}; checkpoint chosen on {chosen}",
        f"held out for agent.evaluate: {rows(n, total)}, {total - n} rows this run never sees",
    ]
    # The rule a warm start clones is tuned on the episodes' rows only: validation stays unseen.
    tuned = tune_rule(data.spread, fit, cfg.cost) if fit >= WARMUP + 2 else None
    if tuned is not None:
        lines.append(
            f"z-score rule tuned on the episodes' rows: {tuned.params.label()} (Sharpe {tuned.sharpe:.2f})"
        )
    # agent.evaluate finds the contract's file in the current directory; elsewhere it needs --csv.
    here = Path(path.name).resolve() == path.resolve()
    return Plan(
        train=dataclasses.replace(data, n_train=fit).source(held_out=False),
        validate=validate,
        contract=data.contract(cfg.cost),
        lines=lines,
        evaluate_args="" if here else f" --csv {shlex.quote(str(path))}",
        episode_steps=min(cfg.episode_length, fit - WARMUP - 1),
        held_out=f"the held-out rows of {path.name}, {rows(n, total)}",
        warnings=warnings,
        rule=DEFAULT_RULE if tuned is None else tuned.params,
        rule_sharpe=None if tuned is None else tuned.sharpe,
        split={"train": [0, fit], "validation": [fit, n] if kept else [], "test": [n, total]},
    )
