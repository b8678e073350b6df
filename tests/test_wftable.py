"""``agent.wftable`` joins a pair's expanding-window folds into one out-of-sample walk: the
joined figures are those of the concatenated daily walks, only seeds present in every fold count,
and folds whose test windows overlap are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.scoring import STEPS_PER_YEAR
from agent.wftable import main

NAMES = ("policy", "rule (tuned)", "rule (fixed)", "flat")


def _doc(seed: int, first_day: int, steps: int, rng: np.random.Generator) -> dict[str, Any]:
    dates = [f"2000-01-01+{first_day + k:05d}" for k in range(steps)]
    series = {}
    for name in NAMES:
        pos = np.zeros(steps) if name == "flat" else rng.choice([-1.0, 0.0, 1.0], size=steps)
        traded = np.abs(np.diff(np.concatenate([[0.0], pos])))
        pnl = pos * rng.normal(0.0, 0.01, size=steps) - 0.0005 * traded
        series[name] = {"pnl": pnl.tolist(), "turnover": traded.tolist(), "position": pos.tolist()}
    score = {"sharpe": 0.0, "total_return": 0.0, "max_drawdown": 0.0, "turnover": 0.0, "in_market": 0.0}
    return {
        "seed": seed,
        "ensemble": None,
        "data": {"columns": ["A", "B"]},
        "split": {"test_dates": [dates[0], dates[-1]], "test": [first_day, first_day + steps + 1]},
        "tuned_rule": {"entry": 2.0, "exit": 0.5, "lookback": 60},
        "scores": {name: dict(score) for name in NAMES},
        "sharpe_difference_policy_minus_tuned_rule": {"value": 0.0, "low": -1.0, "high": 1.0, "se": 0.5},
        "daily": {"rows": [first_day, first_day + steps], "dates": dates, "series": series},
    }


def _sharpe(pnl: np.ndarray) -> float:
    return float(pnl.mean() / pnl.std() * math.sqrt(STEPS_PER_YEAR))


def test_folds_joined(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(7)
    docs = {
        "f1-s0": _doc(0, 0, 300, rng),
        "f1-s1": _doc(1, 0, 300, rng),
        "f0-s0": _doc(0, 301, 400, rng),
        "f0-s1": _doc(1, 301, 400, rng),
        "f0-s2": _doc(2, 301, 400, rng),  # not on every fold: left out of the joined rows
    }
    for name, doc in docs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    assert main([str(p) for p in sorted(tmp_path.iterdir())]) == 0
    out = capsys.readouterr().out
    assert out.count("**A/B**, test window") == 2
    joined = out[out.index("**A/B, 2 folds joined**") :]
    assert "(700 steps)" in joined and "| policy (2 seeds) |" in joined
    sharpes = [
        _sharpe(
            np.concatenate(
                [
                    docs[f"f1-s{s}"]["daily"]["series"]["policy"]["pnl"],
                    docs[f"f0-s{s}"]["daily"]["series"]["policy"]["pnl"],
                ]
            )
        )
        for s in (0, 1)
    ]
    mean, sd = np.mean(sharpes), np.std(sharpes, ddof=1)
    assert f"| policy (2 seeds) | {mean:.2f} ± {sd:.2f} |" in joined
    tuned = np.concatenate(
        [
            docs["f1-s0"]["daily"]["series"]["rule (tuned)"]["pnl"],
            docs["f0-s0"]["daily"]["series"]["rule (tuned)"]["pnl"],
        ]
    )
    assert f"| rule (tuned) | {_sharpe(tuned):.2f} |" in joined
    assert "- seed 0: Sharpe − tuned rule" in joined and "- seed 2" not in joined
    assert "Joined: Sharpe ≥ tuned rule's" in joined


def test_overlapping_folds_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(8)
    a, b = _doc(0, 0, 300, rng), _doc(0, 200, 300, rng)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "the folds' test windows overlap" in capsys.readouterr().err


def test_seeds_evaluated_at_other_costs_or_rule_settings_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rules' rows come from one file: a seed evaluated at another --cost (or fixed rule)
    would be averaged with the others under the first file's rules (QA)."""
    rng = np.random.default_rng(9)
    a, b = _doc(0, 0, 300, rng), _doc(1, 0, 300, rng)
    a["model"], b["model"] = "s0.pt", "s1.pt"
    a["cost"], b["cost"] = 0.0005, 0.002
    for name, doc in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "evaluated at different costs or fixed-rule settings" in err and "Traceback" not in err
    b["cost"] = 0.0005
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "policy (2 seeds)" in capsys.readouterr().out
