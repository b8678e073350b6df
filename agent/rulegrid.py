"""``python -m agent.rulegrid --csv FILE``: is this pair tradable by mean reversion at all?

Every setting of the z-score rule's grid (the 57 that ``agent.evaluate`` tunes over) walked
on each window of the walk-forward split a model trained on the file gets (train,
validation, the two together, test), after the same cost; then how much the choice made
before the test window carries into it: the tuned setting's rank on the test window, how
many settings make money there, and the rank correlation of the settings' Sharpe before
and during the test window.

The test column is hindsight, for diagnosis only: nothing in training or evaluation
chooses on it. It answers the question a bad test figure raises: is the policy at fault,
or did no setting of the rule it is compared with earn anything on that window either?
Numpy only: no torch, no model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.baselines import RuleParams
from agent.data import PriceDataError
from agent.env import MIN_EPISODE, PairData
from agent.features import WARMUP, spread_features
from agent.heldout import columns_flag
from agent.walkforward import RULE_GRID, rule_walk, tune_rule

WINDOWS = ("train", "validation", "train+validation", "test")


@dataclass(frozen=True)
class Setting:
    params: RuleParams
    sharpe: dict[str, float]  # window → Sharpe after cost
    test_turnover: float


@dataclass(frozen=True)
class Grid:
    path: Path
    rows: dict[str, tuple[int, int]]  # window → [lo, hi); no "validation" when agent.train keeps none
    dates: tuple[str, ...] | None
    settings: tuple[Setting, ...]
    tuned: RuleParams  # the best on train+validation: agent.evaluate's tuned rule
    cost: float
    note: str | None = None  # why there is no validation window, when there is none
    described: str = ""  # the price table: columns, rows used and dropped

    def span(self, window: str) -> str:
        lo, hi = self.rows[window]
        if self.dates is None:
            return f"rows {lo}–{hi - 1}"
        return f"{self.dates[lo]} … {self.dates[hi - 1]}"

    def test_sharpes(self) -> np.ndarray:
        return np.array([s.sharpe["test"] for s in self.settings])

    def summary(self) -> dict[str, Any]:
        test = self.test_sharpes()
        before = np.array([s.sharpe["train+validation"] for s in self.settings])
        tuned = next(s for s in self.settings if s.params == self.tuned)
        best = max(self.settings, key=lambda s: s.sharpe["test"])
        return {
            "settings": len(self.settings),
            "positive_on_test": int((test > 0).sum()),
            "median_test_sharpe": float(np.median(test)),
            "best_on_test": {**_params(best.params), "sharpe": best.sharpe["test"]},
            "tuned": {
                **_params(self.tuned),
                "sharpe_train_validation": tuned.sharpe["train+validation"],
                "sharpe_test": tuned.sharpe["test"],
                # 1 = the best of the grid on the test window
                "rank_on_test": int((test > tuned.sharpe["test"]).sum()) + 1,
            },
            "rank_correlation_before_vs_test": _spearman(before, test),
        }

    def lines(self) -> list[str]:
        out = [
            f"data: {self.described or self.path}",
            f"cost {self.cost:g} per unit of position change",
            "split (as agent.train makes it): "
            + "; ".join(f"{w} {self.span(w)}" for w in ("train", "validation", "test") if w in self.rows),
            *([f"no validation window: {self.note}"] if self.note else []),
            "spread: fitted on train + validation, as a model trained on this file serves it",
            f"the z-score rule at each of its {len(self.settings)} settings, annualised Sharpe after cost "
            "(test: hindsight, for diagnosis: nothing chooses on it)",
            f"{'entry':>5} {'exit':>5} {'z over':>6} {'train':>7} {'valid.':>7} {'tr+val':>7} {'test':>7} "
            f"{'test turnover':>13}",
        ]
        for s in sorted(self.settings, key=lambda s: -s.sharpe["train+validation"]):
            p, sh = s.params, s.sharpe
            mark = "  ← tuned" if p == self.tuned else ""
            val = f"{sh['validation']:7.2f}" if "validation" in sh else f"{'—':>7}"
            out.append(
                f"{p.entry:5g} {p.exit:5g} {p.lookback:6d} {sh['train']:7.2f} {val} "
                f"{sh['train+validation']:7.2f} {sh['test']:7.2f} {s.test_turnover:13.4f}{mark}"
            )
        m = self.summary()
        t, b = m["tuned"], m["best_on_test"]
        out += [
            f"tuned on train+validation (agent.evaluate's rule): {self.tuned.label()}: "
            f"Sharpe {t['sharpe_train_validation']:.2f} before the test window, "
            f"{t['sharpe_test']:.2f} on it, "
            f"rank {t['rank_on_test']} of {m['settings']} there",
            f"on the test window: {m['positive_on_test']} of {m['settings']} settings above 0; median "
            f"{m['median_test_sharpe']:.2f}; best in hindsight entry ±{b['entry']:g}σ, exit ±{b['exit']:g}σ, "
            f"z over {b['lookback']} steps: {b['sharpe']:.2f}",
            "rank correlation of the settings' Sharpe before the test window and on it: "
            f"{m['rank_correlation_before_vs_test']:+.2f} (near 0 or below: tuning does not carry over)",
        ]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "cost": self.cost,
            "rows": {w: list(r) for w, r in self.rows.items()},
            "dates": {w: self.span(w) for w in self.rows} if self.dates else None,
            "settings": [
                {**_params(s.params), "sharpe": s.sharpe, "test_turnover": s.test_turnover}
                for s in self.settings
            ],
            "summary": self.summary(),
        }


def _params(p: RuleParams) -> dict[str, Any]:
    return {"entry": p.entry, "exit": p.exit, "lookback": p.lookback}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def grid(
    path: Path,
    columns: list[str] | None = None,
    train_fraction: float = 0.7,
    validation_fraction: float = 0.2,
    cost: float = 0.0005,
) -> Grid:
    """Every rule setting on each window of ``path``'s split (``agent.train``'s, by the same fractions)."""
    if not 0.0 < train_fraction < 1.0:
        raise PriceDataError(f"--train-fraction must be between 0 and 1, got {train_fraction}")
    if not 0.0 <= validation_fraction < 1.0:
        raise PriceDataError(f"--validation-fraction must be in [0, 1), got {validation_fraction}")
    if not (math.isfinite(cost) and cost >= 0):
        raise PriceDataError(f"--cost must be a number at least 0, got {cost}")
    data = PairData.from_csv(path, columns, train_fraction)
    s = data.spread
    test, n = data.held_out
    # agent.train's split (train_data._csv): the last share of the training window validates,
    # unless that leaves too few rows for episodes or for validation; then there is none.
    kept = round(test * validation_fraction)
    note = None
    if validation_fraction > 0 and (test - kept < WARMUP + MIN_EPISODE or kept < MIN_EPISODE):
        note = (
            f"the training window ({test} rows) is too short to keep {validation_fraction:.0%} of it for "
            "validation: agent.train chooses its checkpoint on the whole window, in sample"
        )
        kept = 0
    elif kept == 0:
        note = "--validation-fraction 0"
    fit = test - kept
    rows = {"train": (WARMUP, fit)}
    if kept:
        rows["validation"] = (fit, test)
    rows["train+validation"] = (WARMUP, test)
    rows["test"] = (test, n)
    market = spread_features(s).market
    settings = []
    for p in RULE_GRID:
        sharpe = {w: rule_walk(s, market, lo, hi, p, cost).sharpe for w, (lo, hi) in rows.items()}
        turnover = rule_walk(s, market, test, n, p, cost).turnover
        settings.append(Setting(p, sharpe, turnover))
    tuned = tune_rule(s, test, cost).params  # reads rows before the test window only
    described = data.table.describe() if data.table is not None else ""
    return Grid(Path(path), rows, data.dates, tuple(settings), tuned, cost, note, described)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent.rulegrid",
        description=(
            "Every setting of the z-score rule on each window of a price file's walk-forward split "
            "(train, validation, test), and how far the choice made before the test window carries "
            "into it: is the pair tradable by mean reversion at all?"
        ),
    )
    p.add_argument("--csv", type=Path, required=True, metavar="FILE", help="the price file")
    p.add_argument(
        "--columns", default=None, metavar="A,B", help="its two price columns (default: the only two)"
    )
    p.add_argument(
        "--train-fraction", type=float, default=0.7, metavar="F", help="train + validation share (0.7)"
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="validation's share of those rows (0.2)",
    )
    p.add_argument("--cost", type=float, default=0.0005, help="cost per unit of position change (0.0005)")
    p.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write every figure to this file"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        g = grid(
            args.csv, columns_flag(args.columns), args.train_fraction, args.validation_fraction, args.cost
        )
    except PriceDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in g.lines():
        print(line)
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)  # as agent.evaluate --json does
            args.json.write_text(json.dumps(g.as_dict(), indent=2) + "\n")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    from agent.command import run as run_command

    raise SystemExit(run_command(main))
