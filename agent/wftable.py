"""``python -m agent.wftable FILE.json …``: the walk-forward tables of docs/policy.md from the
``agent.evaluate --json`` files of several models: per pair, the policy's figures as mean ± sd
over its seeds (an ensemble on its own row), the rules and flat, and the issue's target checks."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("sharpe", "Sharpe", 2),
    ("total_return", "return", 3),
    ("max_drawdown", "max DD", 3),
    ("turnover", "turnover", 4),
    ("in_market", "in market", 2),
)
BASELINES = ("rule (tuned)", "rule (fixed)", "flat")


def _cell(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _row(name: str, docs: list[dict[str, Any]], key: str) -> str:
    cells = [_cell([d["scores"][key][c] for d in docs], n) for c, _, n in COLUMNS]
    return f"| {name} | " + " | ".join(cells) + " |"


def table(pair: str, docs: list[dict[str, Any]]) -> list[str]:
    """The markdown table of one pair (docs: its models' evaluate JSON)."""
    seeds = [d for d in docs if not d.get("ensemble")]
    ensembles = [d for d in docs if d.get("ensemble")]
    first = docs[0]
    split, tuned = first["split"], first["tuned_rule"]
    lines = [
        f"**{pair}**, test window {split['test_dates'][0]} … {split['test_dates'][1]} "
        f"({split['test'][1] - split['test'][0]} rows); tuned rule: entry ±{tuned['entry']:g}σ, "
        f"exit ±{tuned['exit']:g}σ, z over {tuned['lookback']} steps",
        "",
        "| | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    if seeds:
        lines.append(_row(f"policy ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})", seeds, "policy"))
    for d in ensembles:
        lines.append(_row(f"ensemble of {d['ensemble']} seeds", [d], "policy"))
    lines += [_row(name, [first], name) for name in BASELINES]
    lines.append("")
    key = "sharpe_difference_policy_minus_tuned_rule"
    for d in seeds + ensembles:
        diff = d[key]
        what = f"ensemble of {d['ensemble']}" if d.get("ensemble") else f"seed {d.get('seed', '?')}"
        chosen = d.get("selection") or {}
        how = ""
        if chosen.get("validation_sharpe") is not None:
            val = chosen["validation_sharpe"]
            how = f"; chosen at episode {chosen['episode']}, validation Sharpe {val:.2f}"
        lines.append(
            f"- {what}: Sharpe − tuned rule {diff['value']:+.2f}, 95% interval "
            f"[{diff['low']:+.2f}, {diff['high']:+.2f}] (s.e. {diff['se']:.2f}){how}"
        )
    if seeds:
        mean = statistics.mean(d["scores"]["policy"]["sharpe"] for d in seeds)
        rule = first["scores"]["rule (tuned)"]
        turnover = statistics.mean(d["scores"]["policy"]["turnover"] for d in seeds)
        ratio = turnover / rule["turnover"] if rule["turnover"] > 0 else float("inf")
        lines += [
            "",
            f"Target: Sharpe ≥ tuned rule's {'yes' if mean >= rule['sharpe'] else 'no'} "
            f"({mean:.2f} vs {rule['sharpe']:.2f}); Sharpe > 0 {'yes' if mean > 0 else 'no'}; "
            f"turnover ≤ 3× the tuned rule's {'yes' if ratio <= 3 else 'no'} ({ratio:.1f}×)",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.wftable", description=__doc__)
    p.add_argument("files", type=Path, nargs="+", help="JSON files written by agent.evaluate --json")
    args = p.parse_args(argv)
    pairs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in args.files:
        try:
            doc = json.loads(path.read_text())
            pairs["/".join(doc["data"]["columns"])].append(doc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(
                f"error: {path}: not an agent.evaluate --json file of a price-file model ({exc})",
                file=sys.stderr,
            )
            return 2
    for pair, docs in pairs.items():
        print("\n".join(table(pair, docs)))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
