"""``python -m agent.wftable FILE.json …``: the walk-forward tables of docs/policy.md from the
``agent.evaluate --json`` files of several models: per pair and test window, the policy's figures
as mean ± sd over its seeds (an ensemble on its own row), the rules and flat, and the issue's
target checks; and, for a pair evaluated on several expanding-window folds
(``agent.pairs export --fold``), the folds' test windows joined into one out-of-sample walk."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from agent.scoring import scores
from agent.verdict import Evidence, verdict
from agent.walkforward import IN_MARKET, sharpe_difference

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("sharpe", "Sharpe", 2),
    ("total_return", "return", 3),
    ("max_drawdown", "max DD", 3),
    ("turnover", "turnover", 4),
    ("in_market", "in market", 2),
)
BASELINES = ("rule (tuned)", "rule (fixed)", "flat")
POLICY, TUNED = "policy", "rule (tuned)"


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
        lines += ["", _target("Target", [d["scores"]["policy"] for d in seeds], first["scores"][TUNED])]
        lines.append(judged(seeds))
    return lines


def judged(docs: list[dict[str, Any]]) -> str:
    """The one verdict (agent.verdict) on a window's seeds: their recorded validation figures
    and test Sharpes, each averaged over the seeds, and the intervals of the differences
    (averaged ends); for one model, what agent.evaluate said of it."""

    def mean(values: list[float]) -> float:
        return float(statistics.mean(values))

    validations = [d.get("validation") or {} for d in docs]
    names = set.intersection(*(set(v) for v in validations)) if validations else set()
    validation = {name: mean([float(v[name]) for v in validations]) for name in names}
    test = {name: mean([float(d["scores"][name]["sharpe"]) for d in docs]) for name in docs[0]["scores"]}
    diffs = [d.get("sharpe_differences") or {} for d in docs]
    common = set.intersection(*(set(x) for x in diffs)) if diffs else set()
    intervals = {
        name: (mean([x[name]["low"] for x in diffs]), mean([x[name]["high"] for x in diffs]))
        for name in common
    }
    return verdict(Evidence(validation, test, intervals))


def _target(label: str, policy: list[dict[str, Any]], rule: dict[str, Any]) -> str:
    """The issue's checks on the policy's mean over seeds against the tuned rule."""
    mean = statistics.mean(p["sharpe"] for p in policy)
    turnover = statistics.mean(p["turnover"] for p in policy)
    ratio = turnover / rule["turnover"] if rule["turnover"] > 0 else float("inf")
    return (
        f"{label}: Sharpe ≥ tuned rule's {'yes' if mean >= rule['sharpe'] else 'no'} "
        f"({mean:.2f} vs {rule['sharpe']:.2f}); Sharpe > 0 {'yes' if mean > 0 else 'no'}; "
        f"turnover ≤ 3× the tuned rule's {'yes' if ratio <= 3 else 'no'} ({ratio:.1f}×)"
    )


def _joined(series: list[dict[str, list[float]]]) -> dict[str, float]:
    """The figures of one policy over several test windows walked one after the other."""
    pnl = np.concatenate([np.asarray(s["pnl"], dtype=np.float64) for s in series])
    turnover = np.concatenate([np.asarray(s["turnover"], dtype=np.float64) for s in series])
    position = np.concatenate([np.asarray(s["position"], dtype=np.float64) for s in series])
    out: dict[str, float] = dict(scores(pnl[None, :], turnover[None, :]).as_dict())
    out["in_market"] = float(np.mean(np.abs(position) > IN_MARKET))
    return out


def _pnl(series: list[dict[str, list[float]]]) -> np.ndarray:
    return np.concatenate([np.asarray(s["pnl"], dtype=np.float64) for s in series])


def joined_table(pair: str, folds: list[list[dict[str, Any]]]) -> list[str]:
    """One pair's expanding-window folds (each a list of its models' evaluate JSON, the folds in
    time order) joined: each seed's test windows walked one after the other, each window with the
    rule tuned before it. Only seeds evaluated on every fold count."""
    firsts = [docs[0] for docs in folds]
    for a, b in itertools.pairwise(firsts):
        if a["daily"]["dates"] and b["daily"]["dates"] and a["daily"]["dates"][-1] >= b["daily"]["dates"][0]:
            raise ValueError(f"{pair}: the folds' test windows overlap ({a['model']}, {b['model']})")
    by_seed = [{d.get("seed"): d for d in docs if not d.get("ensemble")} for docs in folds]
    seeds: list[int] = sorted(s for s in set.intersection(*(set(m) for m in by_seed)) if s is not None)
    spans = ", ".join(f"{d['split']['test_dates'][0]} … {d['split']['test_dates'][1]}" for d in firsts)
    rows = sum(len(d["daily"]["series"][POLICY]["pnl"]) for d in firsts)
    lines = [
        f"**{pair}, {len(folds)} folds joined**: test windows {spans} ({rows} steps)",
        "",
        "| | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    policy = [_joined([m[s]["daily"]["series"][POLICY] for m in by_seed]) for s in seeds]
    if seeds:
        cells = [_cell([p[c] for p in policy], n) for c, _, n in COLUMNS]
        lines.append(
            f"| policy ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}) | " + " | ".join(cells) + " |"
        )
    base = {name: _joined([d["daily"]["series"][name] for d in firsts]) for name in BASELINES}
    for name in BASELINES:
        lines.append(f"| {name} | " + " | ".join(f"{base[name][c]:.{n}f}" for c, _, n in COLUMNS) + " |")
    lines.append("")
    tuned = _pnl([d["daily"]["series"][TUNED] for d in firsts])
    for s in seeds:
        diff = sharpe_difference(_pnl([m[s]["daily"]["series"][POLICY] for m in by_seed]), tuned)
        lines.append(
            f"- seed {s}: Sharpe − tuned rule {diff.value:+.2f}, 95% interval "
            f"[{diff.low:+.2f}, {diff.high:+.2f}] (s.e. {diff.se:.2f})"
        )
    if seeds:
        lines += ["", _target("Joined", policy, base[TUNED])]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.wftable", description=__doc__)
    p.add_argument("files", type=Path, nargs="+", help="JSON files written by agent.evaluate --json")
    args = p.parse_args(argv)
    # pair -> test window's first date -> that window's models
    pairs: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    seen: dict[tuple[str, Any, str], Path] = {}
    for path in args.files:
        try:
            doc = json.loads(path.read_text())
            doc.setdefault("model", str(path))
            data = doc["data"]
            if data.get("matches_contract") is False:
                print(
                    f"error: {path}: the model was evaluated on another file than it was trained on "
                    "(--allow-other-data): its figures are not a walk forward of its own pair",
                    file=sys.stderr,
                )
                return 2
            # The same model on the same file twice would count as two seeds.
            key = (doc["model"], data.get("sha256"), json.dumps(doc["split"].get("test_dates")))
            if key in seen:
                print(
                    f"error: {path} and {seen[key]} are the same model's evaluation: give it once",
                    file=sys.stderr,
                )
                return 2
            seen[key] = path
            pairs["/".join(data["columns"])][doc["split"]["test_dates"][0]].append(doc)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            print(
                f"error: {path}: not an agent.evaluate --json file of a price-file model ({exc})",
                file=sys.stderr,
            )
            return 2
    for pair, windows in pairs.items():
        for start in sorted(windows):
            docs = windows[start]
            terms = {(d.get("cost"), json.dumps(d.get("zscore_rule"), sort_keys=True)) for d in docs}
            if len(terms) > 1:  # the rows of the rules come from one file: all must agree
                print(
                    f"error: {pair}, test window from {start}: the files were evaluated at different costs "
                    "or fixed-rule settings (--cost, --entry/--exit/--lookback): evaluate them alike",
                    file=sys.stderr,
                )
                return 2
        for start in sorted(windows):
            print("\n".join(table(pair, windows[start])))
            print()
        if len(windows) > 1:
            folds = [windows[start] for start in sorted(windows)]
            try:
                print("\n".join(joined_table(pair, folds)))
            except (ValueError, KeyError, TypeError) as exc:
                print(f"error: {exc} (the daily walks of agent.evaluate --json are needed)", file=sys.stderr)
                return 2
            print()
    return 0


if __name__ == "__main__":
    from agent.command import run as run_command

    raise SystemExit(run_command(main))
