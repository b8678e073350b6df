"""`python -m bench e2e` runs through a real Redis and reports every figure
(tiny counts; no timing is asserted), and cleans up after a failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

import bench.e2e.cli
import bench.e2e.measure
from bench.cli import main
from bench.e2e.result import Result
from tests.servers import need_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = ("workers", "redis", "producers", "collector")


def calls(client: redis.Redis, command: str) -> int:
    """How many times the server ran ``command``, scripts' calls included."""
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_e2e_json_has_every_figure(
    tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    need_binary("redis-benchmark")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
    client = redis.Redis(port=redis_server.port)
    before = {cmd: calls(client, cmd) for cmd in ("xadd", "xreadgroup", "xack")}
    out = tmp_path / "e2e.json"
    rc = main(
        [
            "e2e",
            "--rates",
            "200,400",
            "--duration",
            "1",
            "--warmup",
            "50",
            "--hidden",
            "16,16",
            "--floor-requests",
            "2000",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "e2e.png"),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["floor"]["redis_benchmark_xadd_per_s"] > 0
    assert data["floor"]["xadd_xread_round_trip_ms"]["p50"] > 0
    assert [r["scenario"]["rate"] for r in data["results"]] == [200.0, 400.0]
    for r in data["results"]:
        assert r["sent"] == r["received"] == r["scenario"]["total"] and r["errors"] == 0 and r["exactly_once"]
        for key in ("e2e_ms", "queue_ms", "infer_ms", "latency_ms"):
            assert set(r[key]) == {"p50", "p95", "p99", "max", "mean"}
        # The figures agree with each other: throughput is what was answered over
        # the wall time, a batch is at least one state and at most a read's worth.
        assert r["wall_s"] > 0 and r["throughput"] == pytest.approx(r["received"] / r["wall_s"])
        assert 1 <= r["mean_batch"] <= 128
        assert 0 <= r["backlog_end_of_send"] <= r["backlog_max"] <= r["sent"]
        assert set(r["cpu_s"]) == set(ROLES) and all(r["cpu_s"][role] > 0 for role in ROLES)
    assert (tmp_path / "e2e.png").stat().st_size > 5000
    table = capsys.readouterr().out
    assert "through Redis (external)" in table and "model 16,16" in table
    assert "floor: redis-benchmark XADD" in table and "200/s, 1 worker(s)" in table
    # The workers it started served from the Redis it was given (REDIS_URL):
    # there they read as a group and acked, and every state and answer was added.
    assert calls(client, "xreadgroup") > before["xreadgroup"]
    assert calls(client, "xack") > before["xack"]
    assert calls(client, "xadd") - before["xadd"] >= sum(r["sent"] + r["received"] for r in data["results"])
    # Nothing of the run is left in Redis.
    assert not list(client.scan_iter(match="bench:*"))
    client.close()


def test_e2e_drain_two_workers(tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued first, then drained: every state answered once, CPU shares reported."""
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
    out = tmp_path / "drain.json"
    assert (
        main(
            [
                "e2e",
                "--drain",
                "--workers",
                "2",
                "--count",
                "3000",
                "--hidden",
                "16,16",
                "--no-floor",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (r,) = json.loads(out.read_text())["results"]
    assert r["scenario"]["drain"] and r["scenario"]["workers"] == 2
    assert r["sent"] == r["received"] == 3000 and r["exactly_once"] and r["throughput"] > 0
    # Drained: no end-to-end latency, no producer CPU while the workers are timed.
    assert r["e2e_ms"] == {} and r["cpu_s"]["producers"] == 0.0
    assert r["cpu_s"]["workers"] > 0 and r["cpu_s"]["redis"] > 0
    assert r["throughput"] == pytest.approx((r["received"] - 1) / r["wall_s"])


def test_a_failure_mid_run_propagates_and_stops_what_was_started(
    tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error reaches the caller, and still the workers are stopped (by PID)
    and the run's keys deleted."""
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
    seen: dict[str, Any] = {}

    def failing_live(stage: bench.e2e.measure.Stage, *args: Any, **kwargs: Any) -> Result:
        seen["pids"] = stage.workers.pids
        seen["prefix"] = stage.keys.prefix
        stage.client.set(f"{stage.keys.prefix}:marker", 1)
        raise ValueError("boom")

    monkeypatch.setattr(bench.e2e.measure, "live", failing_live)
    with pytest.raises(ValueError, match="boom"):
        main(["e2e", "--count", "10", "--hidden", "16,16", "--no-floor"])
    # Stopped and reaped (waited for): not even a zombie is left in /proc.
    assert seen["pids"] and not any(Path(f"/proc/{pid}").exists() for pid in seen["pids"])
    client = redis.Redis(port=redis_server.port)
    assert not list(client.scan_iter(match=f"{seen['prefix']}:*"))
    client.close()


def test_a_failure_stops_the_redis_it_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without REDIS_URL it starts a redis-server; an error in the run still stops
    it and removes the run's folder, and the error is not swallowed."""
    need_binary("redis-server")
    monkeypatch.delenv("REDIS_URL", raising=False)
    seen: dict[str, Any] = {}

    def failing_run(url: str, model: Path, *args: Any, **kwargs: Any) -> Result:
        seen["url"], seen["folder"] = url, model.parent
        with redis.Redis.from_url(url) as client:
            assert client.ping()  # the one it started, up while the run goes on
        raise KeyError("boom")

    monkeypatch.setattr(bench.e2e.cli, "run_scenario", failing_run)
    with pytest.raises(KeyError, match="boom"):
        main(["e2e", "--count", "10", "--hidden", "16,16", "--no-floor"])
    assert not seen["folder"].exists()
    with redis.Redis.from_url(seen["url"], socket_timeout=1) as client, pytest.raises(redis.ConnectionError):
        client.ping()


def test_e2e_pairs_one_model_then_one_per_pair(
    tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--pairs N: the same states served by one model and by N pair models, every
    state answered once by the model of its pair (no default: a miss would be an error)."""
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
    out = tmp_path / "pairs.json"
    argv = ["e2e", "--pairs", "3", "--count", "600", "--warmup", "0", "--hidden", "16,16", "--no-floor"]
    assert main([*argv, "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["scenario"]["models"] for r in results] == ["single", "pairs"] * 2
    assert all(r["exactly_once"] and r["errors"] == 0 and r["sent"] == 600 for r in results)


def test_e2e_shadow_row_scores_the_challenger(
    tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.e2e.cli import model_folder
    from bench.e2e.scenarios import DEFAULT_SCENARIOS

    (shadow,) = [sc for sc in DEFAULT_SCENARIOS if sc.models == "shadow"]
    assert shadow.rate == 1000 and shadow.workers == 1
    from tests.conftest import write_model

    folder = model_folder(tmp_path, write_model(tmp_path / "m.pt"), shadow)
    from agent.checkpoint import load_checkpoint

    champion = load_checkpoint(folder / "policy.pt")
    challenger = load_checkpoint(folder / "challengers" / "next" / "policy.pt")
    assert champion.contract == challenger.contract and champion.sha256 != challenger.sha256
