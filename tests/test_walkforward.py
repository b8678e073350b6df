"""Walk-forward evaluation: the rule's fast walk is the environment's, its tuning reads no row
of the test window, the bootstrap interval says what it should, and the report and the plot
come out of ``agent.evaluate`` for a model trained on a file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.actor import SACActor
from agent.baselines import RuleParams, zscore_rule
from agent.checkpoint import Metadata, save_checkpoint
from agent.env import PairData
from agent.evaluate import main
from agent.features import WARMUP, spread_features
from agent.heldout import held_out
from agent.scoring import walk_forward
from agent.walkforward import RULE_GRID, rule_walk, sharpe_difference, tune_rule
from agent.wfreport import POLICY, TUNED, report

REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


@pytest.mark.parametrize(
    "params", [RuleParams(2.0, 0.5, 60), RuleParams(1.0, 0.0, 20), RuleParams(1.5, 1.0, 120)]
)
def test_the_rule_s_fast_walk_is_the_environment_s(params: RuleParams) -> None:
    data = PairData.from_csv(REAL)
    market = spread_features(data.spread).market
    start, stop = data.held_out
    fast = rule_walk(data.spread, market, start, stop, params, 0.001)
    env = walk_forward(zscore_rule(params.entry, params.exit, params.lookback), data, 0.001)
    assert fast.steps == env.scores.steps and fast.sharpe == pytest.approx(env.scores.sharpe, abs=1e-12)
    assert fast.total_return == pytest.approx(env.scores.total_return, abs=1e-12)
    assert fast.turnover == pytest.approx(env.scores.turnover) and fast.turnover > 0


def test_rule_tuning_reads_no_row_at_or_after_the_test_window() -> None:
    data = PairData.from_csv(REAL)
    test = data.n_train
    tuned = tune_rule(data.spread, test, 0.0005)
    assert tuned.rows == (WARMUP, test) and len(tuned.grid) == len(RULE_GRID)
    assert tuned.sharpe == max(s for _, s in tuned.grid)
    changed = data.spread.copy()
    changed[test:] = np.random.default_rng(0).normal(0.0, 1.0, len(changed) - test)  # another future
    assert tune_rule(changed, test, 0.0005) == tuned
    changed[test - 1] += 0.05  # the last row before it does count
    assert tune_rule(changed, test, 0.0005) != tuned


def test_the_bootstrap_interval() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0.001, 0.01, 1500)
    same = sharpe_difference(a, a)
    assert same.value == same.low == same.high == same.se == 0.0
    better = sharpe_difference(a + 0.002, a)  # the same noise, a clear edge on every step
    assert better.low > 0 and better.value > 0 and better.low < better.value < better.high
    # Two independent series of 1500 days: the difference of their Sharpes has a standard error of
    # about √(2 · 252 / 1500) = 0.58, which the bootstrap should recover.
    noise = sharpe_difference(a, rng.normal(0.001, 0.01, 1500))
    assert 0.45 < noise.se < 0.75 and noise.low < noise.value < noise.high
    assert noise.high - noise.low == pytest.approx(2 * 1.96 * noise.se, rel=0.2)
    assert sharpe_difference(a, a[::-1], seed=3) == sharpe_difference(a, a[::-1], seed=3)
    with pytest.raises(ValueError, match="same length"):
        sharpe_difference(a, a[:-1])


def test_the_bootstrap_in_chunks_gives_the_same_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawn a few at a time (memory bounded for long files), in the same order: equal."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.001, 0.01, 1500), rng.normal(0.0005, 0.01, 1500)
    whole = sharpe_difference(a, b)
    monkeypatch.setattr("agent.walkforward.BOOTSTRAP_CELLS", 1500 * 7)  # 7 draws at a time
    assert sharpe_difference(a, b) == whole


def _model(tmp_path: Path, metadata: Metadata | None = None) -> Path:
    contract = PairData.from_csv(REAL).contract(cost=0.0005)
    torch.manual_seed(0)
    return save_checkpoint(SACActor(hidden=(8, 8)), tmp_path / "m.pt", metadata, contract=contract)


def test_the_report_s_test_figures_change_with_the_test_rows_and_its_choices_do_not(tmp_path: Path) -> None:
    meta = Metadata(extra={"split": {"train": [0, 281], "validation": [281, 351], "test": [351, 502]}})
    model = _model(tmp_path, meta)
    from agent.checkpoint import load_checkpoint

    ck = load_checkpoint(model)
    h = held_out(model, ck.contract, REAL)
    r = report(ck.actor, h, ck.metadata, 0.0005, 0.0005, RuleParams())
    assert (r.split.validation, r.split.test, r.split.rows) == (281, 351, 502)
    assert r.tuned == tune_rule(h.data.spread, 351, 0.0005)
    assert [f.name for f in r.rows] == [POLICY, TUNED, "rule (fixed)", "flat"]
    moved = h.data.spread.copy()
    moved[351:] += np.linspace(0.0, 0.2, len(moved) - 351)
    import dataclasses

    other = dataclasses.replace(h, data=dataclasses.replace(h.data, spread=moved))
    r2 = report(ck.actor, other, ck.metadata, 0.0005, 0.0005, RuleParams())
    assert r2.tuned == r.tuned  # chosen before the test window
    assert r2.rows[0].scores != r.rows[0].scores or r2.rows[1].scores != r.rows[1].scores


@pytest.mark.parametrize(
    ("plot", "says"),
    [
        ("wf.v2", "name the image with one of .png, .pdf, .svg, .jpg"),
        ("wf", "name the image with one of"),
        (".", "is a folder"),
    ],
)
def test_a_plot_name_matplotlib_cannot_write_is_one_sentence_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plot: str, says: str
) -> None:
    """QA: --plot wf.v2 printed the table, then a matplotlib traceback, and --json was lost."""
    meta = Metadata(extra={"split": {"train": [0, 281], "validation": [281, 351], "test": [351, 502]}})
    _model(tmp_path, meta)
    shutil.copy(REAL, tmp_path / REAL.name)
    monkeypatch.chdir(tmp_path)
    assert main(["m.pt", "--json", "wf.json", "--plot", plot]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: --plot {plot}") and says in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_evaluate_prints_the_walk_forward_table_and_writes_json_and_a_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = Metadata(extra={"split": {"train": [0, 281], "validation": [281, 351], "test": [351, 502]}})
    _model(tmp_path, meta)
    shutil.copy(REAL, tmp_path / REAL.name)
    monkeypatch.chdir(tmp_path)
    assert main(["m.pt", "--json", "wf.json", "--plot", "wf.png"]) == 0
    out = capsys.readouterr().out
    assert (
        "split: train 2017-01-03 … 2018-02-13 (281 rows); validation 2018-02-14 … 2018-05-24 (70 rows); "
        "test 2018-05-25 … 2018-12-31 (151 rows)"
    ) in out
    for name in ("policy", "rule (tuned)", "rule (fixed)", "flat"):
        assert any(line.startswith(f"{name} ") for line in out.splitlines()), name
    assert "sharpe policy − rule (tuned): " in out and "95% interval" in out
    doc = json.loads((tmp_path / "wf.json").read_text())
    assert doc["split"] == {
        "train": [0, 281],
        "validation": [281, 351],
        "test": [351, 502],
        "test_dates": ["2018-05-25", "2018-12-31"],
    }
    assert set(doc["scores"]) == {"policy", "rule (tuned)", "rule (fixed)", "flat"}
    assert doc["scores"]["flat"]["sharpe"] == 0 and doc["scores"]["flat"]["in_market"] == 0
    assert doc["tuned_rule"]["tuning_rows"] == [WARMUP, 351]
    # the daily walks, joined across folds by agent.wftable: one value a step, adding up to the figures
    daily = doc["daily"]
    assert daily["rows"] == [351, 501] and len(daily["dates"]) == 150 and daily["dates"][0] == "2018-05-25"
    for name, walk in daily["series"].items():
        assert len(walk["pnl"]) == len(walk["turnover"]) == len(walk["position"]) == 150
        assert sum(walk["pnl"]) == pytest.approx(doc["scores"][name]["total_return"], abs=1e-12)
        assert sum(walk["turnover"]) / 150 == pytest.approx(doc["scores"][name]["turnover"], abs=1e-12)
    diff = doc["sharpe_difference_policy_minus_tuned_rule"]
    assert diff["low"] <= diff["value"] <= diff["high"]
    png = (tmp_path / "wf.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The docs' tables come from such files: mean ± sd over seeds, the rules once, the target checks.
    from agent.wftable import main as wftable

    second = json.loads((tmp_path / "wf.json").read_text())
    second["seed"], second["scores"]["policy"]["sharpe"] = 1, doc["scores"]["policy"]["sharpe"] + 0.2
    second["model"] = "m1.pt"
    (tmp_path / "wf1.json").write_text(json.dumps(second))
    capsys.readouterr()
    # one model's file twice is not two seeds; a model judged on another file is not its walk forward
    assert wftable(["wf.json", "wf.json"]) == 2
    assert "are the same model's evaluation" in capsys.readouterr().err
    other = json.loads((tmp_path / "wf.json").read_text())
    other["data"]["matches_contract"] = False
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert wftable(["wf1.json", "other.json"]) == 2
    assert "another file than it was trained on" in capsys.readouterr().err
    assert wftable(["wf.json", "wf1.json"]) == 0
    table = capsys.readouterr().out
    mean = doc["scores"]["policy"]["sharpe"] + 0.1
    assert "**SP500/NASDAQ**, test window 2018-05-25 … 2018-12-31 (151 rows)" in table
    assert f"| policy (2 seeds) | {mean:.2f} ± 0.14 |" in table
    assert f"| rule (tuned) | {doc['scores']['rule (tuned)']['sharpe']:.2f} |" in table
    assert "Target: Sharpe ≥ tuned rule's" in table and "- seed 1: Sharpe − tuned rule" in table


def test_a_model_without_a_recorded_split_reports_train_and_validation_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _model(tmp_path)
    shutil.copy(REAL, tmp_path / REAL.name)
    monkeypatch.chdir(tmp_path)
    assert main(["m.pt", "--lookback", "20"]) == 0
    out = capsys.readouterr().out
    assert "split: train+validation 2017-01-03 … 2018-05-24 (351 rows); test 2018-05-25" in out
    assert "rule (fixed): entry ±2σ, exit ±0.5σ, z over 20 steps" in out
    assert main(["m.pt", "--entry", "1", "--exit", "1"]) == 2
    assert "error: --entry/--exit/--lookback: need 0 <= exit < entry" in capsys.readouterr().err


def test_evaluate_json_makes_its_folder_or_says_in_one_line_why_it_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(tmp_path)
    out = tmp_path / "new" / "folder" / "wf.json"
    assert main([str(model), "--csv", str(REAL), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["contract_id"]
    (tmp_path / "a-file").write_text("x")
    capsys.readouterr()
    assert main([str(model), "--csv", str(REAL), "--json", str(tmp_path / "a-file" / "wf.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "Traceback" not in err
