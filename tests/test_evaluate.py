"""Evaluation: a price-file model is judged on the data its contract names, by one walk
forward over the held-out rows (each once, no training row), with states equal to the
streaming builder's; a synthetic model on synthetic paths from its contract; every bad
input one line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.actor import SACActor
from agent.baselines import flat, zscore_rule
from agent.checkpoint import save_checkpoint
from agent.contract import PairContract
from agent.env import PairConfig, PairData
from agent.evaluate import compare_walk, main, walk_forward
from agent.features import NAMES, WARMUP
from agent.heldout import DataError, held_out
from agent.streaming import FeatureBuilder
from agent.train_config import TrainConfig
from agent.train_data import plan

REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


def _model(path: Path, contract: PairContract, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(SACActor(hidden=(8, 8)), path, contract=contract)


def _csv_model(tmp_path: Path) -> tuple[Path, PairContract]:
    contract = PairData.from_csv(REAL).contract(cost=0.0005)
    return _model(tmp_path / "m.pt", contract), contract


def _rows() -> list[str]:
    return REAL.read_text().splitlines()


def test_the_walk_forward_takes_each_held_out_row_once_and_no_training_row() -> None:
    data = PairData.from_csv(REAL)
    n, total = data.held_out
    rule = zscore_rule()
    trace = walk_forward(rule, data, cost=0.001)
    assert len(trace) == data.walk_forward_steps == total - n - 1 == 150
    assert np.array_equal(trace.rows, np.arange(n, total - 1))  # once each, in order, from the first
    assert data.dates is not None and trace.dates == data.dates[n : total - 1]
    assert trace.positions[0] == trace.actions[0] and trace.states[0][NAMES.index("position")] == 0.0
    # Each step's PnL is its position times the spread's next change, less the cost of the trade.
    change = np.diff(data.spread[n:])
    traded = np.abs(np.diff(np.concatenate([[0.0], trace.positions])))
    assert np.array_equal(trace.turnover, traded) and trace.costs == pytest.approx(0.001 * traded)
    assert trace.pnl == pytest.approx(trace.positions * change - 0.001 * traded, abs=1e-15)
    assert trace.scores.steps == 150 and trace.scores.total_return == pytest.approx(trace.pnl.sum())
    assert trace.scores.turnover == pytest.approx(traded.mean()) and abs(trace.positions).sum() > 0
    # Rows before the warm-up history play no part at all.
    t = data.table
    assert t is not None
    a = t.a.copy()
    a[: n - WARMUP] *= 3.0
    spread = data.spread.copy()
    spread[: n - WARMUP] += 1.0
    other = PairData(spread, data.hedge_ratio, data.intercept, n, dates=data.dates, table=t)
    again = walk_forward(rule, other, cost=0.001)
    assert np.array_equal(again.states, trace.states) and np.array_equal(again.pnl, trace.pnl)


def test_the_walk_forward_states_are_what_a_streaming_strategy_computes() -> None:
    """Serving ≡ offline: warm a builder on the rows before the held-out part, then one tick a row."""
    data = PairData.from_csv(REAL)
    contract = data.contract(cost=0.0005)
    torch.manual_seed(3)
    actor = SACActor(hidden=(8, 8))
    trace = walk_forward(actor, data, cost=0.002, feature_cost=contract.cost)  # charged cost ≠ feature cost
    t, (n, _) = data.table, data.held_out
    assert t is not None
    builder = FeatureBuilder(PairContract.from_json(contract.to_json()))
    builder.warm(t.a[n - WARMUP : n], t.b[n - WARMUP : n])
    held = 0.0
    for k, row in enumerate(trace.rows.tolist()):
        state = builder.update(t.a[row], t.b[row], held)
        assert state is not None and np.array_equal(state, trace.states[k]), k
        with torch.inference_mode():
            action = float(actor.deterministic(torch.as_tensor(state[None, :])).numpy()[0, 0])
        assert action == trace.actions[k]
        held = trace.positions[k]


def test_every_policy_walks_the_same_rows_at_the_same_cost() -> None:
    data = PairData.from_csv(REAL)
    traces = compare_walk({"zscore": zscore_rule(), "flat": flat}, data, cost=0.0005)
    assert np.array_equal(traces["zscore"].rows, traces["flat"].rows)
    assert traces["flat"].scores.sharpe == 0.0 and not traces["flat"].pnl.any()


def test_evaluation_defaults_to_the_data_the_contract_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, contract = _csv_model(tmp_path)
    shutil.copy(REAL, tmp_path / REAL.name)
    monkeypatch.chdir(tmp_path)
    assert main(["m.pt", "--json", "figures.json"]) == 0
    out = capsys.readouterr().out
    assert f"m.pt: SP500/NASDAQ contract {contract.id}" in out
    assert f"data: {REAL.name} (sha256 matches the model's contract)" in out
    assert "held out: 151 rows, 2018-05-25 … 2018-12-31 (file lines 353–503)" in out
    assert "one walk forward of 150 steps, starting flat; cost 0.0005" in out
    doc = json.loads((tmp_path / "figures.json").read_text())
    assert doc["contract_id"] == contract.id and doc["cost"] == 0.0005
    assert doc["data"]["held_out_dates"] == ["2018-05-25", "2018-12-31"] and doc["data"]["steps"] == 150
    assert doc["data"]["matches_contract"] and doc["data"]["held_out_rows"] == [351, 502]
    # The printed figures are the walk forward's, for each policy, at the contract's cost.
    expected = compare_walk(
        {"policy": _actor(model), "rule (fixed)": zscore_rule(), "flat": flat},
        held_out(model, contract).data,
        0.0005,
    )
    for name, trace in expected.items():
        shown = doc["scores"][name]
        assert {k: shown[k] for k in trace.scores.as_dict()} == trace.scores.as_dict()
        s = trace.scores
        assert f"{name:<13} {s.sharpe:6.2f} {s.total_return:8.4f} {s.max_drawdown:7.4f}" in out
    # --cost charges another cost; the features still report the contract's.
    assert main(["m.pt", "--cost", "0.002", "--json", "dear.json"]) == 0
    dear = json.loads((tmp_path / "dear.json").read_text())
    assert dear["cost"] == 0.002 and dear["feature_cost"] == 0.0005
    fixed = "rule (fixed)"
    assert dear["scores"][fixed]["total_return"] < doc["scores"][fixed]["total_return"]


def _actor(model: Path) -> SACActor:
    from agent.checkpoint import load_checkpoint

    return load_checkpoint(model).actor


def test_the_file_is_found_elsewhere_only_by_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = _csv_model(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main([str(model)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {model} was trained on {REAL.name} (sha256 {held_sha()[:12]}…), which is not in the "
        "current directory: point at it with --csv FILE\n"
    )
    assert main([str(model), "--csv", str(REAL)]) == 0
    assert "sha256 matches the model's contract" in capsys.readouterr().out


def held_sha() -> str:
    import hashlib

    return hashlib.sha256(REAL.read_bytes()).hexdigest()


def test_another_file_is_refused_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, contract = _csv_model(tmp_path)
    longer = tmp_path / "longer.csv"  # the file and three made-up days after its end
    extra = ["2019-01-02,2510.0,6665.9", "2019-01-03,2447.9,6463.5", "2019-01-04,2531.9,6738.9"]
    longer.write_text("\n".join(_rows() + extra) + "\n")
    assert main([str(model), "--csv", str(longer)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {longer} is not the file {model} was trained on ({REAL.name}, sha256 ")
    assert err.endswith("or pass --allow-other-data to evaluate on this one with the model's spread\n")
    assert err.count("\n") == 1
    assert main([str(model), "--csv", str(longer), "--allow-other-data"]) == 0
    out = capsys.readouterr().out
    assert "NOT the data the model was trained on" in out
    # The rows after the last training date, with the contract's spread (not refitted).
    assert "held out: 154 rows, 2018-05-25 … 2019-01-04" in out and "walk forward of 153 steps" in out
    assert f"{contract.spread.hedge_ratio:.6g}·log NASDAQ" in out and "(from the model's contract)" in out
    assert main([str(model), "--csv", str(REAL), "--columns", "NASDAQ,SP500"]) == 2
    assert "columns NASDAQ,SP500 are not the ones" in capsys.readouterr().err
    # Its own file with the legs swapped: not "another file" (the sha is the same), another pair.
    assert main([str(model), "--csv", str(REAL), "--columns", "NASDAQ,SP500", "--allow-other-data"]) == 0
    out = capsys.readouterr().out
    assert (
        "the file the model was trained on, but read as NASDAQ,SP500, not its SP500,NASDAQ: NOT the pair it "
        "learned (--allow-other-data)"
    ) in out and "NOT the data the model was trained on" not in out


def test_a_synthetic_model_is_judged_on_paths_from_its_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(tmp_path / "s.pt", PairConfig(half_life=5.0, sigma=0.02, cost=0.001).contract())
    argv = [str(model), "--episodes", "2", "--episode-length", "30", "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic pair, contract" in out and "2 × 30 steps, seeds 10000…10001" in out
    assert "(half-life 5, sigma 0.02, regime prob 0.004); cost 0.001" in out
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["data"]["half_life"] == 5.0 and doc["scores"]["policy"]["steps"] == 60
    assert main([*argv, "--half-life", "9", "--cost", "0"]) == 0
    assert "(half-life 9, sigma 0.02, regime prob 0.004); cost 0 per" in capsys.readouterr().out


def test_a_synthetic_model_on_a_price_file_uses_its_contract_s_spread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a served model would: the generator's hedge ratio, not one fitted on the file."""
    model = _model(tmp_path / "s.pt", PairConfig(hedge_ratio=1.5).contract())
    assert main([str(model), "--csv", str(REAL)]) == 0
    out = capsys.readouterr().out
    assert "the model was trained on synthetic paths: no file to check" in out
    assert "spread: log SP500 − 1.5·log NASDAQ − 3.91202 (the synthetic generator's" in out
    assert "held out: 151 rows, 2018-05-25 … 2018-12-31" in out and "walk forward of 150 steps" in out
    assert main([str(model), "--csv", str(REAL), "--train-fraction", "0.5"]) == 0
    assert "held out: 251 rows" in capsys.readouterr().out
    assert main([str(model), "--csv", str(REAL), "--train-fraction", "0.1"]) == 2
    assert (
        "the held-out part starts on line 52, after 50 rows: 140 rows of history" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--episodes", "3"], "--episodes applies to synthetic paths; a price file is evaluated by one walk"),
        (["--train-fraction", "0.5"], "--train-fraction: {model}'s contract fixes its training window"),
        (["--columns", "SP500,Nope"], f"{REAL}: no column 'Nope' (the columns are: date, SP500, NASDAQ)"),
        (["--entry", "0.1"], "--entry/--exit/--lookback: need 0 <= exit < entry"),
        (["--cost", "-1"], "--cost must be at least 0"),
    ],
)
def test_flags_that_do_not_fit_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    model, _ = _csv_model(tmp_path)
    assert main([str(model), "--csv", str(REAL), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(model=model)) and err.count("\n") == 1


def test_price_file_flags_on_a_synthetic_model_and_old_models_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(tmp_path / "s.pt", PairConfig().contract())
    assert main([str(model), "--columns", "A,B"]) == 2
    assert capsys.readouterr().err == (
        f"error: --columns applies to a price file: {model} was trained on synthetic paths\n"
    )
    old = tmp_path / "old.pt"
    torch.save({"format": "statpair.sac_actor", "version": 1}, old)
    assert main([str(old)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {old}: checkpoint format 1 predates") and "retrain" in err


def test_held_out_refuses_too_little_history(tmp_path: Path) -> None:
    model, contract = _csv_model(tmp_path)
    early = tmp_path / "early.csv"  # starts a few days before the training window ends
    early.write_text("\n".join([_rows()[0], *_rows()[340:]]) + "\n")
    with pytest.raises(
        DataError,
        match=r"early\.csv: the held-out part starts on line 14, after 12 rows: 140 rows of history",
    ):
        held_out(model, contract, early, allow_other_data=True)


def test_both_commands_spell_the_columns_flag_alike() -> None:
    from agent.evaluate import _parser as evaluate_parser
    from agent.train_config import _parser as train_parser

    for parser in (evaluate_parser(), train_parser()):
        text = parser.format_help()
        assert "--columns A,B" in text and "--csv-columns" not in text


def test_a_negative_hedge_ratio_and_intercept_print_with_one_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """log SP500 ≈ β·log NASDAQ + α, so against INV = 0.01/NASDAQ the fitted hedge ratio
    is −β and the intercept α + β·log 0.01 < 0: printed as ``+ β`` and ``+ |α'|``."""
    lines = _rows()
    inverse = [lines[0].replace("NASDAQ", "INV")]
    for line in lines[1:]:
        day, sp, nasdaq = line.split(",")
        inverse.append(f"{day},{sp},{0.01 / float(nasdaq)!r}")
    prices = tmp_path / "inverse.csv"
    prices.write_text("\n".join(inverse) + "\n")
    contract = PairData.from_csv(prices).contract(cost=0.0005)
    beta, alpha = contract.spread.hedge_ratio, contract.spread.intercept
    assert beta < 0 and alpha < 0
    expected = f"spread: log SP500 + {-beta:.6g}·log INV + {-alpha:.6g}"
    assert main([str(_model(tmp_path / "m.pt", contract)), "--csv", str(prices)]) == 0
    out = capsys.readouterr().out
    assert f"{expected} (from the model's contract)" in out and "− -" not in out
    trained = plan(TrainConfig(csv=prices, out=tmp_path / "policy.pt", run_dir=tmp_path / "runs"))
    assert f"{expected}, fitted on the training window" in trained.lines
