"""The walk-forward report of a model on a price file: the policy, the z-score rule tuned on
the rows before the test window, the rule at fixed thresholds and flat, each walked once over
the test window at the same cost; their figures, the bootstrap interval on the Sharpe
difference policy − tuned rule, and the split the numbers come from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.baselines import RuleParams, flat, zscore_rule
from agent.heldout import HeldOut
from agent.scoring import Trace, walk_forward
from agent.walkforward import HEADER, Difference, Figures, Split, Tuned, figures, sharpe_difference, tune_rule

if TYPE_CHECKING:
    from agent.actor import SACActor

POLICY, TUNED, FIXED, FLAT = "policy", "rule (tuned)", "rule (fixed)", "flat"


def split_of(held: HeldOut, metadata: Mapping[str, Any]) -> Split:
    """The train/validation/test rows: the test window is the held-out part; the validation
    window is the one the training run recorded in the checkpoint, when it fits this file."""
    test, rows = held.data.held_out
    validation = None
    recorded = metadata.get("split")
    if held.matches and isinstance(recorded, Mapping):
        val, tst = recorded.get("validation"), recorded.get("test")
        if (
            isinstance(val, list)
            and len(val) == 2
            and isinstance(tst, list)
            and tst[:1] == [test]
            and all(isinstance(v, int) for v in val)
            and 0 < val[0] < val[1] == test
        ):
            validation = val[0]
    return Split(validation, test, rows, held.table.dates)


@dataclass(frozen=True)
class Report:
    split: Split
    tuned: Tuned
    fixed: RuleParams
    rows: tuple[Figures, ...]
    traces: dict[str, Trace]
    difference: Difference
    cost: float
    differences: dict[str, Difference]  # policy − each baseline (the tuned rule's is ``difference``)

    def lines(self) -> list[str]:
        t = self.tuned
        lo, hi = t.rows
        out = [
            f"split: {self.split.describe()}",
            f"{TUNED}: {t.params.label()}, chosen from {len(t.grid)} settings by Sharpe "
            f"{t.sharpe:.2f} on one walk over the rows before the test window ({self.split.span(lo, hi)})",
            f"{FIXED}: {self.fixed.label()}",
            f"the same cost for every row: {self.cost:g} per unit of position change",
            HEADER,
            *(f.row() for f in self.rows),
            self.difference.line(POLICY, TUNED),
        ]
        return out

    def as_dict(self) -> dict[str, Any]:
        s, t = self.split, self.tuned
        return {
            "split": {
                "train": [0, s.validation if s.validation is not None else s.test],
                "validation": [s.validation, s.test] if s.validation is not None else None,
                "test": [s.test, s.rows],
                "test_dates": [s.dates[s.test], s.dates[-1]] if s.dates else None,
            },
            "tuned_rule": {
                "entry": t.params.entry,
                "exit": t.params.exit,
                "lookback": t.params.lookback,
                "tuning_sharpe": t.sharpe,
                "tuning_rows": list(t.rows),
                "grid_size": len(t.grid),
            },
            "fixed_rule": {
                "entry": self.fixed.entry,
                "exit": self.fixed.exit,
                "lookback": self.fixed.lookback,
            },
            "scores": {f.name: f.as_dict() for f in self.rows},
            "sharpe_difference_policy_minus_tuned_rule": self.difference.as_dict(),
            "sharpe_differences": {name: d.as_dict() for name, d in self.differences.items()},
            "daily": self.daily(),
        }

    def daily(self) -> dict[str, Any]:
        """Each policy's step-by-step walk over the test window (net PnL, position change, position
        held): what ``agent.wftable`` joins across expanding-window folds."""
        first = next(iter(self.traces.values()))
        return {
            "rows": [int(first.rows[0]), int(first.rows[-1]) + 1],
            "dates": list(first.dates) if first.dates is not None else None,
            "series": {
                name: {
                    "pnl": t.pnl.tolist(),
                    "turnover": t.turnover.tolist(),
                    "position": t.positions.tolist(),
                }
                for name, t in self.traces.items()
            },
        }


def report(
    actor: SACActor,
    held: HeldOut,
    metadata: Mapping[str, Any],
    cost: float,
    feature_cost: float,
    fixed: RuleParams,
) -> Report:
    """Walk every policy over ``held``'s test window; tune the rule on the rows before it only."""
    split = split_of(held, metadata)
    tuned = tune_rule(held.data.spread, split.test, cost)
    tp = tuned.params
    policies = {
        TUNED: zscore_rule(tp.entry, tp.exit, tp.lookback),
        FIXED: zscore_rule(fixed.entry, fixed.exit, fixed.lookback),
        FLAT: flat,
    }
    traces = {POLICY: walk_forward(actor, held.data, cost, feature_cost=feature_cost)}
    for name, policy in policies.items():
        traces[name] = walk_forward(policy, held.data, cost, feature_cost=feature_cost)
    labels = {POLICY: "the model", TUNED: tp.label(), FIXED: fixed.label(), FLAT: "no position"}
    rows = tuple(figures(name, labels[name], trace) for name, trace in traces.items())
    differences = {name: sharpe_difference(traces[POLICY].pnl, traces[name].pnl) for name in policies}
    return Report(split, tuned, fixed, rows, traces, differences[TUNED], cost, differences)
