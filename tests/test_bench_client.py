"""`python -m bench client` through a real Redis and a real worker, tiny counts
(no timing asserted): every mode answered, act_many's states in one read, the
ratios reported, and nothing left behind, even after a failure. Plus its parts
that need no Redis: the rounds, the ratios and their verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import redis

import bench.client.cli
from bench.cli import main
from bench.client.measure import Plan, ratios
from tests.helpers import RecordingWorkers, gone

MODES = ["raw", "act", "raw_many(2)", "act_many(2)", "raw_many(3)", "act_many(3)", "price"]


@pytest.mark.integration
@pytest.mark.slow
def test_client_json_has_every_mode_and_ratio(
    tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
    monkeypatch.setattr(bench.client.cli, "Workers", RecordingWorkers)
    RecordingWorkers.started = []
    client = redis.Redis(port=redis_server.port)
    before = set(client.keys("*"))
    out = tmp_path / "client.json"
    argv = ["client", "--count", "6", "--warmup", "2", "--many", "2,3", "--hidden", "16,16"]
    assert main([*argv, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data["modes"]) == MODES and data["redis"] == "external" and data["backend"] == "jit"
    assert data["plan"] == {"count": 6, "rounds": 6, "warmup": 2, "many": [2, 3]}
    assert not data["cut_short"]
    for name, m in data["modes"].items():
        n = int(name.partition("(")[2].rstrip(")") or 1)
        assert m["calls"] == 6 and m["states_per_call"] == n, name
        # Calls go one after another and a batch is sent atomically: one read each.
        assert m["one_read_calls"] == 6 and m["batch_sizes"] == {str(n): 6}, name
        assert set(m["round_trip_ms"]) == {"n", "mean", "p50", "p95", "p99", "max"}
        assert 0 < m["round_trip_ms"]["p50"] <= m["round_trip_ms"]["max"]
        assert m["worker_latency_ms"]["n"] == 6 * n and m["client_cpu_us_per_call"] > 0
    r = data["ratios"]
    assert r["act_over_raw_p50"]["target"] == 1.2 and r["price_minus_act_p50_us"]["target"] == 50.0
    for key in ("act_many(2)_over_act_p50", "act_many(3)_over_act_p50"):
        assert r[key]["target"] == 1.5 and r[key]["met"] == (r[key]["value"] <= 1.5)
    assert all(math.isfinite(r[k]) for k in ("raw_many(3)_over_act_p50", "act_many(3)_over_raw_many(3)_p50"))
    table = capsys.readouterr().out
    assert "through Redis (external), 1 worker (jit), model 16,16" in table
    assert "6/6 in one read of 3" in table and "PriceClient.tick p50 − act p50" in table
    # Its worker ran and was stopped by PID; its keys are gone, the contract hash included.
    assert len(RecordingWorkers.started) == 1 and all(gone(pid) for pid in RecordingWorkers.started)
    assert set(client.keys("*")) == before
    client.close()


@pytest.mark.integration
@pytest.mark.slow
def test_a_failure_mid_run_stops_the_worker_and_deletes_the_keys(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
    monkeypatch.setattr(bench.client.cli, "Workers", RecordingWorkers)
    RecordingWorkers.started = []
    client = redis.Redis(port=redis_server.port)
    before = set(client.keys("*"))

    async def failing(url: str, keys: Any, plan: Plan) -> dict[str, Any]:
        client.set(f"{keys.prefix}:marker", 1)
        assert client.hget(keys.contracts, "*")  # the worker published its contract there
        raise ValueError("boom")

    monkeypatch.setattr(bench.client.cli, "measure", failing)
    with pytest.raises(ValueError, match="boom"):
        main(["client", "--count", "2", "--hidden", "16,16"])
    assert RecordingWorkers.started and all(gone(pid) for pid in RecordingWorkers.started)
    assert set(client.keys("*")) == before
    client.close()


def test_rounds_split_the_calls() -> None:
    assert Plan(count=5).per_round() == [1] * 5  # the default: modes alternate call by call
    assert Plan(count=7, rounds=3).per_round() == [3, 2, 2]
    assert Plan(count=2, rounds=9).per_round() == [1, 1]


def _figures(p50: dict[str, float], cpu: dict[str, float]) -> dict[str, dict[str, Any]]:
    return {k: {"round_trip_ms": {"p50": v}, "client_cpu_us_per_call": cpu[k]} for k, v in p50.items()}


def test_ratios_and_verdicts() -> None:
    figures = _figures(
        {"raw": 1.0, "act": 1.1, "raw_many(4)": 1.3, "act_many(4)": 2.0, "price": 1.2},
        {"raw": 100.0, "act": 130.0, "raw_many(4)": 200.0, "act_many(4)": 300.0, "price": 150.0},
    )
    r = ratios(figures, (4,))
    assert r["act_over_raw_p50"] == {"value": pytest.approx(1.1), "target": 1.2, "met": True}
    assert r["act_many(4)_over_act_p50"]["value"] == pytest.approx(2.0 / 1.1)
    assert r["act_many(4)_over_act_p50"]["met"] is False
    assert r["price_minus_act_p50_us"]["value"] == pytest.approx(100.0)
    assert r["price_minus_act_p50_us"]["met"] is False
    assert r["raw_many(4)_over_act_p50"] == pytest.approx(1.3 / 1.1)
    assert r["act_many(4)_over_raw_many(4)_p50"] == pytest.approx(2.0 / 1.3)
    assert r["act_minus_raw_cpu_us"] == pytest.approx(30.0) and r["price_minus_act_cpu_us"] == 20.0


@pytest.mark.parametrize("argv", [["--count", "0"], ["--rounds", "0"], ["--max-seconds", "0"]])
def test_bad_counts_are_a_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m bench client: error:")
