"""Training: a smoke run whose checkpoint the worker accepts, seeded
determinism, the CLI, and the tracker wiring against SQLite."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from agent.actor import DEFAULT_HIDDEN, STATE_DIM, SACActor
from agent.checkpoint import load_checkpoint
from agent.features import STATE_DIM as FEATURES_STATE_DIM
from agent.sac import SACHyper
from agent.train import DESCRIPTION, TrainConfig, config_from_args, train
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
    assert ck.metadata["eval_metric"] == "validation_sharpe" and ck.metadata["episodes"] >= 1
    assert ck.metadata["eval_score"] == pytest.approx(result.best_sharpe)
    served = prepare(result.out, jit=True, state_dim=28)
    assert served.backend == "jit" and served.state_dim == 28
    logged = [h for h in result.history if "eval_sharpe" in h]
    assert len(logged) == 3 and all("critic_loss" in h and "alpha" in h for h in result.history)
    assert result.published and result.updates == 241 and result.warnings == []


def test_seeded_training_is_reproducible(tmp_path: Path) -> None:
    a = train(tiny(tmp_path / "a", episodes=2), progress=False)
    b = train(tiny(tmp_path / "b", episodes=2), progress=False)
    c = train(tiny(tmp_path / "c", episodes=2, seed=1), progress=False)
    wa, wb, wc = (load_checkpoint(r.final_path).actor.state_dict() for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


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
    assert "--force" in text
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
    assert len(client.get_metric_history(result.run_id, "eval_sharpe")) == 3
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert names == {"policy.pt", "final.pt"}
    ck = load_checkpoint(result.out)
    assert ck.metadata["run_id"] == result.run_id
