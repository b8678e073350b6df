"""The opt-in MLflow tracker: no-op paths, param/metric hygiene, SQLite end to
end, a real `mlflow server` on PostgreSQL, and servers that fail or hang."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import BlackHole, MlflowServer, free_port, postgres_database, wait_until
from tracking import MlflowTracker, flatten_params, is_finite
from tracking.mlflow_tracker import mask_url

ROOT = Path(__file__).resolve().parent.parent
# What these tests give a local SQLite store to start and take every call: creating
# its tables alone outlasts the default 5 s when the machine is loaded. Tests of
# timeouts pass their own.
LOCAL_STORE_S = 60.0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def test_noop_when_tracking_uri_unset() -> None:
    with MlflowTracker(experiment="t", params={"a": 1}) as tracker:
        assert tracker.enabled is False
        tracker.log_metrics({"x": 1.0}, step=0)
        tracker.log_param("k", "v")
        tracker.log_params({"n": {"m": 2}})
        tracker.set_tag("t", "1")
        tracker.log_artifact("/no/such/path")
    assert tracker.run_id is None and "not set" in tracker.disabled_reason


def test_unset_uri_never_imports_mlflow() -> None:
    code = (
        "import sys\n"
        "from tracking import MlflowTracker\n"
        "with MlflowTracker('t', params={'a': 1}) as t:\n"
        "    t.log_metrics({'x': 1.0}, step=1); t.log_artifact('/nope')\n"
        "assert not t.enabled\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_blank_uri_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "   ")
    with MlflowTracker("t") as tracker:
        assert not tracker.enabled


def test_uri_set_but_mlflow_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` raise ImportError
    with MlflowTracker("t") as tracker:
        tracker.log_metrics({"x": 1.0})
    assert not tracker.enabled and "not installed" in tracker.disabled_reason
    assert caplog.text.count("experiment tracking disabled") == 1


def test_flatten_nested_params() -> None:
    out = flatten_params({"a": 1, "nested": {"b": 2, "c": {"d": 3}}})
    assert out == {"a": 1, "nested.b": 2, "nested.c.d": 3}


def test_is_finite() -> None:
    assert is_finite(1.0) and is_finite(3) and is_finite("2.5")
    assert not is_finite(float("nan")) and not is_finite(float("inf")) and not is_finite(-float("inf"))
    assert not is_finite("x") and not is_finite(None)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://:s3cret@mlflow.local:5000/x?y=1", "http://:***@mlflow.local:5000/x?y=1"),
        ("http://me:s3cret@mlflow.local/", "http://me:***@mlflow.local/"),
        ("postgresql://me:s3cret@[::1]:5432/db", "postgresql://me:***@[::1]:5432/db"),
        ("http://me:p@ss:w@rd@host:1/", "http://me:***@host:1/"),
        ("http://me@mlflow.local:5000", "http://me@mlflow.local:5000"),
        ("sqlite:///tmp/mlruns.db", "sqlite:///tmp/mlruns.db"),
        ("http://me:s3cret@[::1/", "<unparseable url>"),
    ],
)
def test_uri_in_logs_never_shows_the_password(uri: str, shown: str) -> None:
    assert mask_url(uri) == shown
    assert MlflowTracker("t", tracking_uri=uri)._uri_for_log() == shown


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_real_tracking_to_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "pytest_exp")
    long_value = "v" * 7000
    many = {f"p{i:03d}": i for i in range(250)}
    with MlflowTracker(
        experiment="ignored",
        run_name="r1",
        params={"lr": 1e-4, "net": {"hidden": [256, 256]}, "long": long_value, **many},
        tags={"algo": "sac"},
        close_timeout_s=LOCAL_STORE_S,
    ) as tracker:
        assert tracker.enabled is True
        tracker.log_metrics({"reward": 0.5, "nan_skipped": float("nan"), "inf": float("inf")}, step=1)
        tracker.log_metrics({"reward": 0.8}, step=2)
        tracker.log_metrics({f"m{i}": float(i) for i in range(2500)}, step=3)
        tracker.set_tag("phase", "test")
    assert tracker.enabled and tracker.dropped_metrics == 2 and tracker.errors == 0
    client = _client(uri)
    exp = client.get_experiment_by_name("pytest_exp")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.metrics["reward"] == pytest.approx(0.8)
    assert "nan_skipped" not in run.data.metrics and "inf" not in run.data.metrics
    assert len([k for k in run.data.metrics if k.startswith("m")]) == 2500
    assert [m.step for m in client.get_metric_history(run.info.run_id, "reward")] == [1, 2]
    params = run.data.params
    assert params["lr"] == "0.0001" and params["net.hidden"] == "[256, 256]"
    assert len(params["long"]) == 6000 and params["long"].endswith("...")
    assert len([k for k in params if k.startswith("p")]) == 250
    assert run.data.tags["algo"] == "sac" and run.data.tags["phase"] == "test"


def test_failed_block_marks_run_failed_and_propagates(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    with (
        pytest.raises(ZeroDivisionError),
        MlflowTracker("boom", tracking_uri=uri, close_timeout_s=LOCAL_STORE_S) as tracker,
    ):
        tracker.log_metrics({"x": 1.0}, step=0)
        1 / 0  # noqa: B018
    (run,) = _client(uri).search_runs([_client(uri).get_experiment_by_name("boom").experiment_id])
    assert run.info.status == "FAILED" and run.data.metrics["x"] == 1.0


def test_missing_artifact_is_swallowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("mlflow")
    with MlflowTracker("art", tracking_uri=f"sqlite:///{tmp_path / 'db.sqlite'}") as tracker:
        tracker.log_artifact(tmp_path / "missing.pt")
        assert tracker.flush(30)
    assert tracker.enabled and tracker.errors == 1
    assert "artifact failed" in caplog.text and "missing.pt does not exist" in caplog.text


def test_bad_uri_disables_at_start() -> None:
    pytest.importorskip("mlflow")
    with MlflowTracker("t", tracking_uri="nosuchscheme://x") as tracker:
        tracker.log_metrics({"x": 1.0})
        tracker.flush(30)
    assert not tracker.enabled and "could not start an MLflow run" in tracker.disabled_reason


def _train(tracker: MlflowTracker, episodes: int) -> float:
    """A stand-in training loop: some work and one metrics call per episode."""
    started = time.monotonic()
    acc = 0.0
    for ep in range(episodes):
        acc += sum(i * i for i in range(2000))
        tracker.log_metrics({"train_reward": float(ep), "eval_sharpe": 0.1 * ep}, step=ep)
    return time.monotonic() - started


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["refused", "blackhole"])
def test_unreachable_server_never_stalls_training(kind: str) -> None:
    pytest.importorskip("mlflow")
    hole = BlackHole() if kind == "blackhole" else None
    uri = hole.url if hole else f"http://127.0.0.1:{free_port()}"
    try:
        started = time.monotonic()
        with MlflowTracker("t", tracking_uri=uri, close_timeout_s=3) as tracker:
            training = _train(tracker, 50)
        total = time.monotonic() - started
    finally:
        if hole:
            hole.close()
    assert not tracker.enabled
    reason = tracker.disabled_reason
    if kind == "refused":
        assert "could not start an MLflow run" in reason and "Max retries exceeded" in reason
    else:
        assert "did not answer within 2 s" in reason or "timed out" in reason.lower()
    print(f"{kind}: training {training:.2f} s, whole block {total:.2f} s: {tracker.disabled_reason}")
    # Only a generous bound that catches a minutes-long hang (MLflow's defaults).
    assert total < 60, f"tracking cost {total - training:.1f} s"


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    """An empty database for MLflow: on STATPAIR_TEST_PG_DSN's server, else a throwaway cluster."""
    with postgres_database("statpair_mlflow") as uri:
        yield uri


@pytest.fixture
def mlflow_server(postgres_uri: str, tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(postgres_uri, tmp_path / "artifacts", tmp_path / "mlflow.log")
    yield server
    server.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_real_mlflow_server_on_postgres(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    artifact = tmp_path / "policy.pt"
    artifact.write_bytes(os.urandom(4096))
    with MlflowTracker(
        "server_exp",
        run_name="pg",
        params={"a": {"b": 1}},
        tags={"algo": "sac"},
        tracking_uri=mlflow_server.url,
        close_timeout_s=60,
    ) as tracker:
        tracker.log_metrics({"reward": 1.5, "bad": float("nan")}, step=0)
        tracker.log_artifact(artifact)
    assert tracker.enabled and tracker.errors == 0
    client = _client(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("server_exp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"a.b": "1"}
    assert run.data.metrics == {"reward": 1.5}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server
    got = Path(client.download_artifacts(run.info.run_id, "policy.pt", str(tmp_path / "dl")))
    assert got.read_bytes() == artifact.read_bytes()
    assert list((tmp_path / "artifacts").rglob("policy.pt"))  # stored by the server


@pytest.mark.integration
@pytest.mark.slow
def test_server_dies_mid_run(mlflow_server: MlflowServer) -> None:
    with MlflowTracker("dies", tracking_uri=mlflow_server.url, close_timeout_s=5) as tracker:
        tracker.log_metrics({"before": 1.0}, step=0)
        assert tracker.flush(60) and tracker.run_id is not None
        mlflow_server.stop()
        for ep in range(1, 200):
            tracker.log_metrics({"after": float(ep)}, step=ep)
            if not tracker.enabled:
                break
        wait_until(lambda: not tracker.enabled, timeout=120, what="the tracker to disable itself")
        training_went_on = ep
    assert not tracker.enabled and "in a row failed" in tracker.disabled_reason
    assert training_went_on >= 1
