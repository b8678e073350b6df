"""Training: a smoke run whose checkpoint the worker accepts, seeded
determinism, the CLI, and the tracker wiring against SQLite."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import pytest
import torch

import agent.train
from agent.actor import DEFAULT_HIDDEN, STATE_DIM, SACActor
from agent.checkpoint import load_checkpoint
from agent.features import STATE_DIM as FEATURES_STATE_DIM
from agent.sac import SACHyper
from agent.train import DESCRIPTION, TrainConfig, config_from_args, new_run_dir, train
from worker.model import prepare

ROOT = Path(__file__).resolve().parent.parent


def tiny(tmp_path: Path, **kw: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "episodes": 3,
        "episode_length": 100,
        "learning_starts": 60,
        "batch_size": 32,
        "eval_every": 1,
        "eval_episodes": 2,
        "eval_length": 40,
        "hidden": (16, 16),
        "critic_hidden": (16, 16),
        "bc_steps": 20,
        "out": tmp_path / "models" / "policy.pt",
        "run_dir": tmp_path / "runs",
        "quiet": True,
    }
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def test_smoke_run_gives_a_checkpoint_the_worker_serves(tmp_path: Path) -> None:
    result = train(tiny(tmp_path), progress=False)  # 300 steps, 240 updates
    assert result.episodes == 3 and result.out.exists() and result.final_path.exists()
    assert result.best_path.exists() and result.run_id is None
    ck = load_checkpoint(result.out, state_dim=28)
    assert ck.metadata["eval_metric"] == "validation_sharpe" and ck.metadata["episodes"] >= 0
    assert ck.metadata["eval_score"] == pytest.approx(result.best_sharpe)
    served = prepare(result.out, jit=True, state_dim=28)
    assert served.backend == "jit" and served.state_dim == 28
    logged = [h for h in result.history if "eval_sharpe" in h]
    # The warm start's clone is validated first (episode 0), then every episode's actor.
    assert [h["episode"] for h in logged] == [0, 1, 2, 3]
    assert all("critic_loss" in h and "alpha" in h for h in result.history[1:])
    assert result.published and result.updates == 241 and result.warnings == []


def test_seeded_training_is_reproducible(tmp_path: Path) -> None:
    a = train(tiny(tmp_path / "a", episodes=2), progress=False)
    b = train(tiny(tmp_path / "b", episodes=2), progress=False)
    c = train(tiny(tmp_path / "c", episodes=2, seed=1), progress=False)
    wa, wb, wc = (load_checkpoint(r.final_path).actor.state_dict() for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_two_runs_in_the_same_second_with_the_same_seed_get_a_folder_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Frozen:
            return cls(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(agent.train, "datetime", Frozen)
    cfg = tiny(tmp_path, episodes=1)
    a = train(cfg, progress=False)
    files = {p: p.stat().st_ino for p in (a.best_path, a.final_path)}
    b = train(cfg, progress=False)
    runs = tmp_path / "runs"
    assert a.best_path.parent == a.final_path.parent == runs / "sac-20260102-030405-seed0"
    assert b.best_path.parent == b.final_path.parent == runs / "sac-20260102-030405-seed0-2"
    assert b.best_path.exists() and b.final_path.exists()
    # The first run's files are still the ones it wrote (a checkpoint is replaced by a new file).
    assert {p: p.stat().st_ino for p in files} == files


def test_a_run_folder_is_never_reused(tmp_path: Path) -> None:
    taken = tmp_path / "runs" / "sac-x-seed0"
    taken.mkdir(parents=True)
    (taken / "best.pt").write_bytes(b"another run's")
    made = [new_run_dir(tmp_path / "runs", "sac-x-seed0") for _ in range(2)]
    assert made == [tmp_path / "runs" / "sac-x-seed0-2", tmp_path / "runs" / "sac-x-seed0-3"]
    assert all(m.is_dir() and not any(m.iterdir()) for m in made)
    assert (taken / "best.pt").read_bytes() == b"another run's"


def test_cli_flags_override_every_field(tmp_path: Path) -> None:
    cfg = config_from_args(
        [
            "--episodes",
            "7",
            "--seed",
            "3",
            "--hidden",
            "32,16",
            "--quiet",
            "--gamma",
            "0.9",
            "--csv",
            "x.csv",
        ],
        model_dir=str(tmp_path),
    )
    assert (cfg.episodes, cfg.seed, cfg.hidden, cfg.quiet, cfg.gamma) == (7, 3, (32, 16), True, 0.9)
    assert cfg.csv == Path("x.csv") and cfg.out == tmp_path / "policy.pt"
    assert config_from_args(["--out", "o.pt"], model_dir=str(tmp_path)).out == Path("o.pt")


def test_help_says_each_thing_once(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.train", "--help"],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert DESCRIPTION in text and DESCRIPTION.endswith(".")
    assert "--updates-per-step" in text and "gradient updates per environment step" in text
    assert text.count("$MODEL_DIR/policy.pt") == 1 and text.count("models/policy.pt") == 1
    assert "(default: 64,64)" in text and "(default: 128,128)" in text and "(64, 64)" not in text
    assert "--force" in text and "--columns A,B" in text and "--csv-columns" not in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_bad_sizes_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        config_from_args(["--hidden", "64,x"])
    assert exit_info.value.code == 2
    assert "--hidden: expected positive integers such as 64,64, got '64,x'" in capsys.readouterr().err


def test_one_default_actor_size_and_state_dim() -> None:
    assert DEFAULT_HIDDEN == (64, 64)
    assert SACActor().hidden == SACHyper().hidden == TrainConfig().hidden == DEFAULT_HIDDEN
    assert STATE_DIM is FEATURES_STATE_DIM and SACActor().state_dim == STATE_DIM == 28


def test_hyper_takes_every_shared_field() -> None:
    cfg = TrainConfig(hidden=(8,), critic_hidden=(4, 4), actor_lr=1e-3, gamma=0.5, tau=0.1, init_alpha=0.3)
    hp = cfg.hyper()
    shared = [f.name for f in dataclasses.fields(SACHyper) if hasattr(cfg, f.name)]
    assert len(shared) == len(dataclasses.fields(SACHyper)) - 1  # target_entropy has no flag
    assert all(getattr(hp, name) == getattr(cfg, name) for name in shared)
    assert hp.target_entropy is None


@pytest.mark.slow  # a whole training run in a fresh interpreter
def test_untracked_training_never_imports_mlflow(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from agent.train import main\n"
        f"main(['--episodes', '1', '--episode-length', '30', '--learning-starts', '10',"
        f" '--batch-size', '8', '--eval-episodes', '1', '--eval-length', '20', '--hidden', '8,8',"
        f" '--critic-hidden', '8,8', '--out', r'{tmp_path / 'm.pt'}', '--run-dir', r'{tmp_path}'])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mlflow'], 'mlflow imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "best validation Sharpe" in proc.stdout and (tmp_path / "m.pt").exists()


def test_tracker_wiring_against_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # Create the store's tables first (seconds on a loaded machine): training waits only
    # MlflowTracker's start timeout (2 s) for its run id before the first checkpoint.
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()
    result = train(tiny(tmp_path, experiment="train-test"), progress=False)
    assert result.run_id
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["config.episodes"] == "3" and run.data.params["config.hidden"] == "(16, 16)"
    assert run.data.tags["algo"] == "sac" and run.data.tags["env_class"] == "PairTradingEnv"
    for key in (
        "train_reward",
        "eval_reward",
        "eval_sharpe",
        "eval_turnover",
        "critic_loss",
        "actor_loss",
        "alpha",
        "baseline_zscore_sharpe",
        "best_eval_sharpe",
    ):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(result.run_id, "eval_sharpe")) == 4  # the clone, then 3 episodes
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert names == {"policy.pt", "final.pt"}
    ck = load_checkpoint(result.out)
    assert ck.metadata["run_id"] == result.run_id


# --- a user's price file, through the command line ---------------------------------------------

REAL = ROOT / "tests" / "data" / "sp500_nasdaq_2017_2018.csv"
HEADER, *ROWS = REAL.read_text().splitlines()


def _file(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _tiny_argv(tmp_path: Path, csv: Path, *more: str) -> list[str]:
    argv = ["--csv", str(csv), "--episodes", "1", "--learning-starts", "20", "--batch-size", "8"]
    argv += ["--hidden", "8,8", "--critic-hidden", "8,8", "--quiet", "--run-dir", str(tmp_path / "runs")]
    argv += ["--bc-steps", "20"]
    return [*argv, "--out", str(tmp_path / "m.pt"), *more]


def _dup(rows: list[str]) -> list[str]:
    return [*rows[:10], rows[9], *rows[10:]]


def _bad_cell(rows: list[str], i: int, value: str) -> list[str]:
    day, _, b = rows[i].split(",")
    return [*rows[:i], f"{day},{value},{b}", *rows[i + 1 :]]


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        (ROWS[::-1], None, "{f}: the dates descend (line 2: 2018-12-31, last line 503: 2017-01-03): sort"),
        (_dup(ROWS), None, "{f} lines 11 and 12: the date 2017-01-17 repeats"),
        (ROWS, "SP500,DOW", "{f}: no column 'DOW' (the columns are: date, SP500, NASDAQ)"),
        (ROWS, "SP500", "{f}: name exactly two price columns, got 1: ['SP500']"),
        (ROWS, "date,SP500", "{f}: column 'date' holds dates, not prices"),
        (_bad_cell(ROWS, 9, "abc"), None, "{f} line 11: SP500 'abc' is not a number"),
        (_bad_cell(ROWS, 9, "-1"), None, "{f} line 11: SP500 -1 is not a positive price"),
        (ROWS[:271], None, "{f}: 271 usable rows are too few: need at least 272 (warm-up 140"),
    ],
    ids=["descending", "duplicate", "wrong-column", "one-column", "date-column", "text", "negative", "short"],
)
def test_a_bad_price_file_is_one_line_from_both_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list[str], columns: str | None, message: str
) -> None:
    from agent.evaluate import main as evaluate
    from agent.train import main

    bad = _file(tmp_path / "bad.csv", rows)
    flags = ["--columns", columns] if columns else []
    assert main(_tiny_argv(tmp_path, bad, *flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(f=bad)) and err.count("\n") == 1, err
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "runs").exists()
    if "too few" in message:
        return  # a training need: the evaluator's own (history before the held-out rows) is tested there
    # The evaluator reads files with the same loader and says the same (a synthetic model on the file).
    from tests.conftest import write_model

    model = write_model(tmp_path / "s.pt")
    assert evaluate([str(model), "--csv", str(bad), *flags]) == 2
    assert capsys.readouterr().err == err


def test_compact_dates_and_missing_values_train_and_evaluate_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.evaluate import main as evaluate
    from agent.train import main

    rows = [r.replace("-", "", 2) for r in ROWS]  # 2017-01-03 → 20170103, in a column not named "date"
    rows = _bad_cell(rows, 20, "")  # a blank in the training window
    rows = _bad_cell(rows, 450, "NA")  # and one in the held-out part: both dropped and counted
    _file(tmp_path / "compact.csv", rows, header="when,SP500,NASDAQ")
    monkeypatch.chdir(tmp_path)
    assert main(_tiny_argv(tmp_path, Path("compact.csv"))) == 0
    printed = capsys.readouterr().out
    assert "data: compact.csv: A = SP500, B = NASDAQ, dates from column when; 500 rows used" in printed
    assert "2 dropped for a missing value" in printed and "spread: log SP500 − 0.68" in printed
    # 500 usable rows: the first 350 (file lines 2–352 less the blank) train, 150 are held out.
    assert "training window: 2017-01-03 … 2018-05-24 (file lines 2–352)" in printed
    assert "held out for agent.evaluate: 2018-05-25 … 2018-12-31 (file lines 353–503), 150 rows" in printed
    hint = printed.strip().splitlines()[-2]
    assert hint.endswith(f": python -m agent.evaluate {tmp_path / 'm.pt'}")  # the file is here: no --csv
    contract = load_checkpoint(tmp_path / "m.pt").contract
    assert contract.data.kind == "csv" and contract.data.date_column == "when"
    assert contract.data.dropped_rows == 2 and contract.data.rows == 500
    assert evaluate(hint.split("python -m agent.evaluate ")[1].split()) == 0
    out = capsys.readouterr().out
    assert "held out: 150 rows, 2018-05-25 … 2018-12-31" in out and "walk forward of 149 steps" in out


def test_the_closing_hint_names_the_file_when_it_is_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.train import main

    assert main(_tiny_argv(tmp_path, REAL)) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-2]
    assert hint == (
        "evaluate it on the held-out rows of sp500_nasdaq_2017_2018.csv, 2018-05-25 … 2018-12-31 "
        f"(file lines 353–503): python -m agent.evaluate {tmp_path / 'm.pt'} --csv {REAL}"
    )


def test_csv_training_keeps_validation_and_held_out_rows_out_of_its_episodes(tmp_path: Path) -> None:
    import numpy as np

    from agent.env import PairData
    from agent.train_data import plan

    p = plan(tiny(tmp_path, csv=REAL))
    data = PairData.from_csv(REAL)
    fit = 351 - 70  # the last 20 % of the 351 training rows choose the checkpoint
    assert p.lines[2] == (
        "training window: 2017-01-03 … 2018-05-24 (file lines 2–352); episodes from 2017-01-03 … "
        "2018-02-13 (file lines 2–282); checkpoint chosen on validation 2018-02-14 … 2018-05-24 "
        "(file lines 283–352)"
    )
    assert p.episode_steps == 100 and p.warnings == []  # tiny's --episode-length
    assert plan(TrainConfig(csv=REAL)).episode_steps == fit - 140 - 1  # shorter than 256: all there is
    for seed in range(5):
        path = p.train is not None and p.train(np.random.default_rng(seed), 100 + 140 + 1)
        assert isinstance(path, np.ndarray) and len(path) == 241
        start = int(np.flatnonzero(data.spread == path[0])[0])
        assert np.array_equal(data.spread[start : start + 241], path) and start + 241 <= fit
    assert p.validate(lambda s: np.zeros(len(s))).steps == 70 - 1  # one walk over the validation rows
    # A window too short to split validates in sample, and says so.
    small = _file(tmp_path / "small.csv", ROWS[:272])
    q = plan(tiny(tmp_path, csv=small))
    assert "the checkpoint is chosen on the whole training window, in sample" in q.warnings[0]
    assert q.validate(lambda s: np.zeros(len(s))).steps == 190 - 140 - 1


def test_seeded_csv_training_is_reproducible(tmp_path: Path) -> None:
    runs = [
        train(tiny(tmp_path / name, csv=REAL, episodes=2, seed=seed), progress=False)
        for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    ]
    wa, wb, wc = (load_checkpoint(r.final_path).actor.state_dict() for r in runs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert runs[0].best_sharpe == runs[1].best_sharpe and runs[0].updates > 0


def test_columns_is_one_spelling_and_needs_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from agent.train import main

    assert config_from_args(["--csv", "p.csv", "--columns", "KO,PEP"]).column_names() == ["KO", "PEP"]
    with caplog.at_level("WARNING"):
        assert config_from_args(["--csv", "p.csv", "--csv-columns", "KO,PEP"]).columns == "KO,PEP"
    assert "--csv-columns is deprecated: use --columns" in caplog.text
    assert main(["--columns", "KO,PEP", "--out", str(tmp_path / "m.pt")]) == 2
    assert (
        capsys.readouterr().err == "error: --columns names the price columns of --csv FILE: give --csv too\n"
    )
    assert main(["--csv", str(REAL), "--train-fraction", "1.5", "--out", str(tmp_path / "m.pt")]) == 2
    assert "--train-fraction must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_a_price_file_s_short_episodes_count_in_the_too_short_warning() -> None:
    cfg = TrainConfig(episodes=1, learning_starts=200)
    assert cfg.planned_updates() > 0 and cfg.planned_updates(140) == 0
