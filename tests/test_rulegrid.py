"""``python -m agent.rulegrid``: every rule setting on each window of a file's walk-forward split.
Its columns before the test window read no test row, its tuned setting is ``agent.evaluate``'s,
its summary counts what its table shows, and a bad file is one line naming it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from agent.env import PairData
from agent.rulegrid import _spearman, grid, main
from agent.walkforward import RULE_GRID, tune_rule

REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def _write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_the_windows_before_the_test_window_read_none_of_its_rows(tmp_path: Path) -> None:
    base = grid(REAL)
    test, _ = base.rows["test"]
    rows = _rows(REAL)
    rng = np.random.default_rng(0)
    for r in rows[1 + test :]:  # another future: every test-window price moved
        r[1] = f"{float(r[1]) * float(rng.uniform(0.9, 1.1)):.6f}"
    other = grid(_write(tmp_path / "other.csv", rows))
    assert other.rows == base.rows and other.tuned == base.tuned
    before = ("train", "validation", "train+validation")
    for a, b in zip(base.settings, other.settings, strict=True):
        assert {w: a.sharpe[w] for w in before} == {w: b.sharpe[w] for w in before}
    assert [s.sharpe["test"] for s in base.settings] != [s.sharpe["test"] for s in other.settings]


def test_the_split_and_the_tuned_rule_are_the_trainer_s_and_the_evaluator_s() -> None:
    g = grid(REAL)
    data = PairData.from_csv(REAL)
    test, n = data.held_out
    assert g.rows["test"] == (test, n)
    # agent.train keeps the last 20 % of the training window for validation
    assert g.rows["validation"] == (test - round(test * 0.2), test)
    assert g.tuned == tune_rule(data.spread, test, 0.0005).params
    assert [s.params for s in g.settings] == list(RULE_GRID)
    tuned = next(s for s in g.settings if s.params == g.tuned)
    assert tuned.sharpe["train+validation"] == max(s.sharpe["train+validation"] for s in g.settings)


def test_the_summary_counts_what_the_table_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid.json"
    assert main(["--csv", str(REAL), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    test = np.array([s["sharpe"]["test"] for s in doc["settings"]])
    m = doc["summary"]
    assert m["settings"] == len(RULE_GRID) == len(test)
    assert m["positive_on_test"] == int((test > 0).sum())
    assert m["median_test_sharpe"] == pytest.approx(float(np.median(test)))
    assert m["best_on_test"]["sharpe"] == pytest.approx(float(test.max()))
    assert m["tuned"]["rank_on_test"] == int((test > m["tuned"]["sharpe_test"]).sum()) + 1
    printed = capsys.readouterr().out
    assert printed.count("← tuned") == 1
    assert f"{m['positive_on_test']} of {len(RULE_GRID)} settings above 0" in printed


def test_rank_correlation() -> None:
    a = np.array([0.3, -0.1, 0.5, 0.2])
    assert _spearman(a, a) == pytest.approx(1.0)
    assert _spearman(a, -a) == pytest.approx(-1.0)
    assert _spearman(a, np.zeros(4)) == 0.0


def test_a_bad_file_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(REAL)
    rows[7][2] = "abc"
    bad = _write(tmp_path / "bad.csv", rows)
    assert main(["--csv", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.csv" in err and "Traceback" not in err
    assert main(["--csv", str(REAL), "--validation-fraction", "1"]) == 2
    assert "--validation-fraction" in capsys.readouterr().err
    assert main(["--csv", str(REAL), "--cost", "nan"]) == 2
    assert "--cost" in capsys.readouterr().err
    assert main(["--csv", str(REAL), "--json", str(tmp_path / "new" / "dir" / "g.json")]) == 0
    assert (tmp_path / "new" / "dir" / "g.json").is_file()
    capsys.readouterr()
    assert main(["--csv", str(REAL), "--json", str(bad / "g.json")]) == 2  # a file where a folder must be
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "Traceback" not in err
    assert main(["--csv", str(REAL), "--train-fraction", "2"]) == 2
    assert "--train-fraction" in capsys.readouterr().err


def test_it_runs_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from agent.rulegrid import main\n"
        f"raise SystemExit(main(['--csv', {str(REAL)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "settings above 0" in done.stdout


@pytest.mark.parametrize("fraction", ["0.9", "0"])
def test_without_a_validation_window_it_says_so_as_agent_train_would(
    fraction: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 0.9 of this file's 351 training rows leaves too few for episodes: agent.train validates in sample
    from agent.train import TrainConfig
    from agent.train_data import plan

    p = plan(TrainConfig(csv=REAL, validation_fraction=float(fraction)))
    assert p.split["validation"] == []
    g = grid(REAL, validation_fraction=float(fraction))
    assert "validation" not in g.rows and g.note
    assert g.rows["train"] == g.rows["train+validation"]
    assert main(["--csv", str(REAL), "--validation-fraction", fraction]) == 0
    out = capsys.readouterr().out
    assert "no validation window" in out and "—" in out
