"""``python -m agent.train --register NAME`` without a server: a bad name or no
MLFLOW_TRACKING_URI stops it before training, one line, exit 2; MLflow down at the
end of a run never fails it (the note says registration was skipped); the held-out
scores it records. Against a real server: test_registry_server.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.baselines import zscore_rule
from agent.checkpoint import load_checkpoint
from agent.release import held_out_scores
from agent.scoring import EVAL_SEED, actor_policy, compare
from agent.train import VALIDATION_SEED, config_from_args, main, summary, train
from tests.servers import free_port
from tests.test_train import tiny


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    for name in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)


def test_register_needs_a_server_and_a_good_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--episodes", "1", "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "p.pt")]
    assert main([*argv, "--register", "statpair-policy"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --register needs MLFLOW_TRACKING_URI: the MLflow server that holds the registry"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert main([*argv, "--register", "no/slash"]) == 2
    assert capsys.readouterr().err.startswith("error: --register: model name 'no/slash' must be")
    assert not (tmp_path / "runs").exists()  # refused before training
    assert config_from_args(["--register", "statpair-policy"]).register == "statpair-policy"
    assert config_from_args([]).register is None


def test_mlflow_down_never_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    caplog.set_level(logging.INFO)
    result = train(tiny(tmp_path, register="statpair-policy"), progress=False)
    assert result.best_path.exists() and result.out.exists() and result.run_id is None
    assert result.register_note == (
        "registration as statpair-policy skipped: the run was not tracked (MLflow never started it); "
        f"the checkpoint is still at {result.best_path}"
    )
    assert result.register_note in summary(result).splitlines()
    assert result.registered is False


def test_register_that_did_not_register_does_not_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run is kept (its checkpoints, its summary), but a script that asked for a registered
    version learns from the exit status that it has none."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    argv = ["--episodes", "1", "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "p.pt")]
    small = ["--episode-length", "100", "--learning-starts", "60", "--batch-size", "32", "--hidden", "16,16"]
    small += ["--critic-hidden", "16,16", "--bc-steps", "20", "--eval-episodes", "1", "--eval-length", "40"]
    assert main([*argv, *small, "--register", "statpair-policy"]) == 1
    assert "registration as statpair-policy skipped" in capsys.readouterr().out
    assert (tmp_path / "p.pt").exists()


def test_held_out_scores_beside_the_rule(tmp_path: Path) -> None:
    result = train(tiny(tmp_path, episodes=2), progress=False)
    cfg = tiny(tmp_path, episodes=2)
    model, rule, what = held_out_scores(cfg, result.best_path, load_checkpoint(result.best_path))
    assert what == "2 synthetic paths × 40 steps, seeds from 10000"
    assert model.steps == rule.steps == 2 * 40
    ck = load_checkpoint(result.best_path)
    policies = {"policy": actor_policy(ck.actor), "zscore": zscore_rule()}
    on = {seed: compare(policies, 2, cfg.pair(40), None, seed) for seed in (EVAL_SEED, VALIDATION_SEED)}
    assert (model, rule) == (on[EVAL_SEED]["policy"], on[EVAL_SEED]["zscore"])  # the held-out seeds
    assert model != on[VALIDATION_SEED]["policy"]  # not the paths that chose the checkpoint
