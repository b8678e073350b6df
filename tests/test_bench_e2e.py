"""`python -m bench e2e` runs through a real Redis and reports every figure
(tiny counts; no timing is asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.cli import main
from tests.servers import need_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_e2e_json_has_every_figure(
    tmp_path: Path, redis_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    need_binary("redis-benchmark")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
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
        assert r["sent"] == r["received"] == r["scenario"]["total"] and r["exactly_once"]
        for key in ("e2e_ms", "queue_ms", "infer_ms", "latency_ms"):
            assert set(r[key]) == {"p50", "p95", "p99", "max", "mean"}
        assert r["throughput"] > 0 and r["mean_batch"] >= 1
    assert (tmp_path / "e2e.png").stat().st_size > 5000
    table = capsys.readouterr().out
    assert "floor: redis-benchmark XADD" in table and "200/s, 1 worker(s)" in table
    # Nothing of the run is left in Redis.
    import redis

    client = redis.Redis(port=redis_server.port)
    assert not list(client.scan_iter(match="bench:*"))
    client.close()
    assert os.environ["REDIS_URL"].startswith("redis://127.0.0.1")


def test_e2e_drain_two_workers(tmp_path: Path, redis_server, monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert r["cpu_s"]["workers"] > 0 and r["cpu_s"]["redis"] > 0
