"""``python -m agent.evaluate MODEL``: judge a policy against the z-score rule and flat
on data it never trained on, at the same cost.

A model trained on a price file is judged walk-forward on that file (its contract names
the file, its sha256 and the split): one contiguous walk over the test window, against the
rule tuned on the rows before it, the rule at fixed thresholds and flat (``agent.wfreport``);
a model trained on synthetic paths, on held-out synthetic paths.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.extras import require

require(__name__, "python -m agent.evaluate", "train", ("torch",))
# Only once the extra is known to be there: the imports below need it.
from agent.baselines import Policy, RuleParams, flat, zscore_rule
from agent.contract import ContractError, CsvData, PairContract, SyntheticData
from agent.data import PriceDataError
from agent.env import PairConfig
from agent.heldout import DataError, held_out
from agent.scoring import (
    EVAL_SEED,
    STEPS_PER_YEAR,
    Scores,
    Trace,
    actor_policy,
    as_policy,
    compare,
    compare_walk,
    make_envs,
    rollout,
    scores,
    walk_forward,
)
from agent.verdict import Evidence, verdict

if TYPE_CHECKING:
    from agent.actor import SACActor

__all__ = [
    "EVAL_SEED",
    "STEPS_PER_YEAR",
    "Scores",
    "Trace",
    "actor_policy",
    "as_policy",
    "compare",
    "compare_walk",
    "main",
    "make_envs",
    "rollout",
    "scores",
    "walk_forward",
]

DESCRIPTION = (
    "Judge a policy against the z-score rule and flat, at the same cost, on data it never trained on: "
    "a price file's held-out part (one walk forward) or held-out synthetic paths."
)
DEFAULT_EPISODES, DEFAULT_LENGTH = 64, 1024


PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg")  # matplotlib writes each; the suffix picks


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.evaluate", description=DESCRIPTION)
    p.add_argument("model", type=Path, help="a checkpoint written by python -m agent.train")
    p.add_argument(
        "--cost", type=float, default=None, help="cost per unit of position change (default: the contract's)"
    )
    p.add_argument(
        "--entry",
        type=float,
        default=2.0,
        help="the z-score rule at fixed thresholds ('rule (fixed)'; the tuned rule picks its own): "
        "enter beyond ±entry σ (default 2.0)",
    )
    p.add_argument(
        "--exit", type=float, default=0.5, help="the fixed rule: exit inside ±exit σ (default 0.5)"
    )
    p.add_argument(
        "--lookback",
        type=int,
        default=60,
        choices=(20, 60, 120),
        help="the fixed rule: the z-score's window in steps (default 60)",
    )
    p.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write every figure to this file"
    )
    csv = p.add_argument_group("a price file (the default for a model trained on one)")
    csv.add_argument(
        "--csv",
        type=Path,
        default=None,
        metavar="FILE",
        help="the price file (default: the file named by the model's contract, in the current directory)",
    )
    csv.add_argument(
        "--columns", default=None, metavar="A,B", help="its two price columns (default: the contract's)"
    )
    csv.add_argument(
        "--allow-other-data",
        action="store_true",
        help="evaluate on a file other than the one the model was trained on (its sha256 differs)",
    )
    csv.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE",
        help="draw the cumulative PnL over the test window, with the split marked, to this image "
        "(.png, .pdf, .svg or .jpg)",
    )
    csv.add_argument(
        "--train-fraction",
        type=float,
        default=None,
        metavar="F",
        help="a synthetic model on a price file: walk the rows after this share of them (default 0.7)",
    )
    syn = p.add_argument_group("synthetic paths (for a model trained on them)")
    syn.add_argument(
        "--episodes", type=int, default=None, help=f"held-out paths (default {DEFAULT_EPISODES})"
    )
    syn.add_argument(
        "--episode-length", type=int, default=None, help=f"steps per path (default {DEFAULT_LENGTH})"
    )
    syn.add_argument("--seed", type=int, default=None, help=f"first held-out seed (default {EVAL_SEED})")
    for flag, what in (
        ("half-life", "spread half-life"),
        ("sigma", "spread innovation std"),
        ("regime-prob", "regime-shift chance per step"),
    ):
        syn.add_argument(f"--{flag}", type=float, default=None, help=f"{what} (default: the contract's)")
    return p


def _synthetic_config(contract: PairContract, args: argparse.Namespace, cost: float) -> PairConfig:
    gen = contract.data
    if not isinstance(gen, SyntheticData):
        raise DataError(f"{args.model}: trained on a price file, not synthetic paths")
    return PairConfig(
        episode_length=DEFAULT_LENGTH if args.episode_length is None else args.episode_length,
        half_life=gen.half_life if args.half_life is None else args.half_life,
        sigma=gen.sigma if args.sigma is None else args.sigma,
        regime_prob=gen.regime_prob if args.regime_prob is None else args.regime_prob,
        regime_mean_jump=gen.regime_mean_jump,
        market_sigma=gen.market_sigma,
        hedge_ratio=contract.spread.hedge_ratio,
        cost=cost,
        # cost_vol reports the contract's cost, as a served model sees it, whatever cost is charged.
        feature_cost=contract.cost,
    )


def _check_flags(args: argparse.Namespace, on_file: bool, contract: PairContract) -> None:
    def given(*flags: str) -> list[str]:
        values = [(f, getattr(args, f.replace("-", "_"))) for f in flags]
        return [f for f, v in values if v is not None and v is not False]

    if on_file:
        wrong = given("episodes", "episode-length", "seed", "half-life", "sigma", "regime-prob")
        if wrong:
            raise DataError(
                f"--{wrong[0]} applies to synthetic paths; a price file is evaluated by one walk "
                "forward over its held-out part"
            )
        if args.plot is not None:
            if args.plot.is_dir():
                raise DataError(
                    f"--plot {args.plot} is a folder: name the image, e.g. {args.plot / 'plot.png'}"
                )
            if args.plot.suffix.lower() not in PLOT_SUFFIXES:
                raise DataError(
                    f"--plot {args.plot}: name the image with one of {', '.join(PLOT_SUFFIXES)} "
                    "(the suffix chooses the format)"
                )
        if isinstance(contract.data, CsvData) and args.train_fraction is not None:
            raise DataError(
                f"--train-fraction: {args.model}'s contract fixes its training window "
                f"(rows {contract.data.train_rows[0]}–{contract.data.train_rows[1] - 1})"
            )
    else:
        wrong = given("columns", "allow-other-data", "train-fraction", "plot")
        if wrong:
            raise DataError(
                f"--{wrong[0]} applies to a price file: {args.model} was trained on synthetic paths"
            )


def _title(model: Path, contract: PairContract) -> str:
    pair = f"{contract.pair} " if contract.pair else "synthetic pair, "
    return f"{model}: {pair}contract {contract.id}"


def _policies(actor: SACActor, args: argparse.Namespace) -> dict[str, Policy]:
    try:
        rule = zscore_rule(args.entry, args.exit, args.lookback)
    except ValueError as exc:
        raise DataError(f"--entry/--exit/--lookback: {exc}") from None
    return {"policy": actor_policy(actor), "zscore": rule, "flat": flat}


def _run_file(
    actor: SACActor,
    contract: PairContract,
    args: argparse.Namespace,
    cost: float,
    metadata: dict[str, Any],
    say: Callable[[str], None],
) -> dict[str, Any]:
    from agent.wfreport import report

    h = held_out(args.model, contract, args.csv, args.columns, args.allow_other_data, args.train_fraction)
    fixed = RuleParams(args.entry, args.exit, args.lookback)
    try:
        fixed.check()
    except ValueError as exc:
        raise DataError(f"--entry/--exit/--lookback: {exc}") from None
    say(_title(args.model, contract))
    for line in h.describe():
        say(line)
    start, stop = h.data.held_out
    say(
        f"held out: {stop - start} rows, {h.span()}: one walk forward of {h.data.walk_forward_steps} steps, "
        f"starting flat; cost {cost:g} per unit of position change"
    )
    r = report(actor, h, metadata, cost, contract.cost, fixed)
    for line in r.lines():
        say(line)
    figures = {"data": h.as_dict(), **r.as_dict()}
    test = {name: f["sharpe"] for name, f in figures["scores"].items()}
    intervals = {name: (d.low, d.high) for name, d in r.differences.items()}
    figures.update(_judged(metadata, test, intervals, say))
    if args.plot:
        from agent.wfplot import plot

        title = _title(Path(args.model.name), contract)  # the file name: the folder is the reader's business
        say(f"plot: {plot(r, h.data.spread, title, args.plot)}")
    return figures


def _judged(
    metadata: dict[str, Any],
    test: dict[str, float],
    intervals: dict[str, tuple[float, float]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The one verdict (agent.verdict) on the validation figures the checkpoint recorded and
    these test figures; said, and returned for the JSON."""
    recorded = metadata.get("validation")
    validation = {str(k): float(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
    line = verdict(Evidence(validation, test, intervals))
    say(line)
    return {"validation": validation, "verdict": line}


def _run_synthetic(
    actor: SACActor,
    contract: PairContract,
    args: argparse.Namespace,
    cost: float,
    metadata: dict[str, Any],
    say: Callable[[str], None],
) -> dict[str, Any]:
    config = _synthetic_config(contract, args, cost)
    episodes = DEFAULT_EPISODES if args.episodes is None else args.episodes
    if episodes < 1 or config.episode_length < 1:
        raise DataError(
            f"--episodes and --episode-length must be at least 1, got {episodes}, {config.episode_length}"
        )
    seed = EVAL_SEED if args.seed is None else args.seed
    result = compare(_policies(actor, args), episodes, config, None, seed)
    say(_title(args.model, contract))
    say(
        f"synthetic held-out paths: {episodes} × {config.episode_length} steps, "
        f"seeds {seed}…{seed + episodes - 1} "
        f"(half-life {config.half_life:g}, sigma {config.sigma:g}, regime prob {config.regime_prob:g}); "
        f"cost {cost:g} per unit of position change"
    )
    for name, sc in result.items():
        say(sc.row(name))
    data = {
        "kind": "synthetic",
        "episodes": episodes,
        "episode_length": config.episode_length,
        "first_seed": seed,
        "half_life": config.half_life,
        "sigma": config.sigma,
        "regime_prob": config.regime_prob,
    }
    figures: dict[str, Any] = {"data": data, "scores": {k: v.as_dict() for k, v in result.items()}}
    names = {"policy": "policy", "zscore": "rule (fixed)", "flat": "flat"}
    test = {names[k]: v.sharpe for k, v in result.items()}
    figures.update(_judged(metadata, test, {}, say))
    return figures


def judge(path: Path, argv: list[str] | None = None) -> dict[str, Any]:
    """What ``python -m agent.evaluate PATH ARGV…`` computes, without printing: its figures,
    ``lines`` (what it would print) and ``verdict`` (the one line). For the trainer's summary,
    so that both say the same of a model. Raises what the command reports as an error."""
    from agent.checkpoint import load_checkpoint

    args = _parser().parse_args([str(path), *(argv or [])])
    ck = load_checkpoint(args.model)
    cost = ck.contract.cost if args.cost is None else args.cost
    on_file = isinstance(ck.contract.data, CsvData) or args.csv is not None
    _check_flags(args, on_file, ck.contract)
    lines: list[str] = []
    run = _run_file if on_file else _run_synthetic
    figures = run(ck.actor, ck.contract, args, cost, ck.metadata, lines.append)
    return {**figures, "lines": lines}


def main(argv: list[str] | None = None) -> int:
    from agent.checkpoint import CheckpointError, load_checkpoint

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        ck = load_checkpoint(args.model)
        contract = ck.contract
        cost = contract.cost if args.cost is None else args.cost
        if cost < 0:
            raise DataError(f"--cost must be at least 0, got {cost}")
        on_file = isinstance(contract.data, CsvData) or args.csv is not None
        _check_flags(args, on_file, contract)
        run = _run_file if on_file else _run_synthetic
        figures = run(ck.actor, contract, args, cost, ck.metadata, print)
    except (CheckpointError, ContractError, PriceDataError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        written = _write_json(args.json, ck, contract, cost, args, figures)
        if written is not None:
            print(f"error: {written}", file=sys.stderr)
            return 2
    return 0


def _write_json(
    path: Path,
    ck: Any,
    contract: PairContract,
    cost: float,
    args: argparse.Namespace,
    figures: dict[str, Any],
) -> str | None:
    """Write ``--json``; the reason it could not, or None."""
    members = ck.metadata.get("ensemble_of")
    doc = {
        "model": str(args.model),
        "seed": ck.metadata.get("seed"),
        "ensemble": len(members) if isinstance(members, list) else None,
        # How training chose this checkpoint: its episode and its validation Sharpe.
        "selection": {
            "episode": ck.metadata.get("episodes"),
            "validation_sharpe": ck.metadata.get("eval_score"),
        },
        "contract_id": contract.id,
        "cost": cost,
        "feature_cost": contract.cost,
        "zscore_rule": {"entry": args.entry, "exit": args.exit, "lookback": args.lookback},
        "steps_per_year": STEPS_PER_YEAR,
        **figures,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}"
    return None


if __name__ == "__main__":
    from agent.command import run as run_command

    raise SystemExit(run_command(main))
