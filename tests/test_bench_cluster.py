"""`python -m bench e2e --cluster 3` with tiny counts: every state answered exactly
once across the shards (one Redis, one shard, three shards split between two
workers by SERVE_SHARDS: a shard no worker served would leave states unanswered),
each shard its share, the per-state figures present and agreeing with each
other, and nothing left behind: no key, no server. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

import bench.e2e.cluster_cli
from bench.cli import main
from bench.e2e.result import Result
from tests.servers import LocalRedisCluster, RedisProcess, need_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNT = 600  # a multiple of the 3 shards: the producer sends round the pairs, each shard its third


def test_cluster_bench_answers_every_state_once_and_reports_every_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    need_binary("redis-server")
    need_binary("redis-cli")
    started: list[Any] = []
    leftovers: dict[str, list[bytes]] = {}
    run = bench.e2e.cluster_cli.run_scenario

    class RecordedCluster(LocalRedisCluster):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.extend(self.nodes)

    class RecordedRedis(RedisProcess):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    def checked_run(url: str, *args: Any, **kwargs: Any) -> Result:
        result = run(url, *args, **kwargs)
        # Still up: what the scenario wrote must be gone (a cluster client scans every primary).
        client = redis.RedisCluster.from_url(url) if result.scenario.cluster else redis.Redis.from_url(url)
        with client:
            leftovers[result.scenario.name] = list(client.scan_iter(match="bench*"))
        return result

    monkeypatch.setattr(bench.e2e.cluster_cli, "LocalRedisCluster", RecordedCluster)
    monkeypatch.setattr(bench.e2e.cluster_cli, "RedisProcess", RecordedRedis)
    monkeypatch.setattr(bench.e2e.cluster_cli, "run_scenario", checked_run)
    out = tmp_path / "cluster.json"
    argv = ["e2e", "--cluster", "3", "--workers", "2", "--serve", "split", "--count", str(COUNT)]
    argv += ["--warmup", "60", "--hidden", "16,16", "--backend", "eager", "--json", str(out)]
    assert main(argv) == 0

    doc = json.loads(out.read_text())
    layout = doc["cluster"]
    assert (layout["primaries"], layout["replicas_per_primary"], layout["shards"]) == (3, 0, 3)
    names = [r["scenario"]["name"] for r in doc["results"]]
    assert names == [
        f"{kind}, 2w, {row}"
        for kind in ("saturation", "drain")
        for row in ("single", "cluster, 1 shard", "cluster, 3 shards, split")
    ]
    for r in doc["results"]:
        sc, nodes, per = r["scenario"], r["redis_nodes"], r["redis_per_state"]
        name = sc["name"]
        assert r["sent"] == r["received"] == COUNT and r["errors"] == 0 and r["exactly_once"], name
        assert leftovers[name] == [], name
        # Every node is reported: one Redis, or the three primaries (no replicas asked for).
        assert len(nodes) == (3 if sc["cluster"] else 1), name
        assert all(n["role"] == "primary" and n["cpu_s"] is not None for n in nodes), name
        # The shards are held by the nodes the lanes name, each once, each answered its share.
        held = sorted(s for n in nodes for s in n["shards"])
        assert held == list(range(sc["shards"] if sc["cluster"] else 1)), name
        assert sum(n["states"] for n in nodes) == COUNT, name
        per_shard = COUNT // len(held)
        assert all(n["states"] == per_shard * len(n["shards"]) for n in nodes), name
        if sc["cluster"] and sc["shards"] == 3:
            assert sorted(len(n["shards"]) for n in nodes) == [1, 1, 1], name  # tags spread over slots
        # Per-state figures agree with the per-node ones they are made of.
        xadd = sum(n["commands"].get("xadd", {}).get("calls", 0) for n in nodes)
        lanes = len(held)
        # Saturation: the producer's XADD and the result's; drain: the results and one wake-up per lane.
        assert xadd == (2 * COUNT if not sc["drain"] else COUNT + lanes), name
        assert per["commands"]["xadd"]["calls"] == pytest.approx(xadd / COUNT)
        for command in ("xreadgroup", "evalsha", "xack"):
            calls = sum(n["commands"].get(command, {}).get("calls", 0) for n in nodes)
            assert 0 < calls <= COUNT, (name, command)
        # The worker reads each shard straight from its node: no COMMAND GETKEYS round trips.
        assert all("command|getkeys" not in n["commands"] for n in nodes), name
        cpu = sum(n["cpu_s"] for n in nodes)
        assert cpu > 0 and per["redis_cpu_us"] == pytest.approx(1e6 * cpu / COUNT)
        assert r["cpu_s"]["redis"] == pytest.approx(cpu, rel=0.05, abs=0.02)
        assert 0 < per["top_level_us"] <= sum(c["us"] for c in per["commands"].values())
        assert r["worker_cpu_us"] == pytest.approx(1e6 * r["cpu_s"]["workers"] / COUNT)
        assert r["throughput"] > 0 and r["wall_s"] > 0
    split = [r["scenario"]["name"] for r in doc["results"] if r["scenario"]["split"]]
    assert split == ["saturation, 2w, cluster, 3 shards, split", "drain, 2w, cluster, 3 shards, split"]
    table = capsys.readouterr().out
    assert "3-primary Redis Cluster" in table and "saturation, 2w, cluster, 3 shards, split" in table
    # Every server it started (one Redis, three cluster nodes) is stopped and reaped.
    assert len(started) == 4
    assert all(not Path(f"/proc/{server.pid}").exists() for server in started)


def test_act_latency_plain_and_durable_on_a_cluster_with_replicas(tmp_path: Path) -> None:
    """The durable comparison's figures: both modes timed the same number of
    calls, and the block of plain calls costs two XADDs per state on the
    primaries (the state's and its result's) with the replicas' CPU apart."""
    from bench.e2e.cli import make_model
    from bench.e2e.durable import act_latency

    model, _ = make_model(tmp_path, (16, 16))
    with LocalRedisCluster(tmp_path / "c", primaries=3, replicas=1) as cluster:
        out = act_latency(cluster.url, model, 3, 30, "eager", tmp_path)
        with redis.RedisCluster.from_url(cluster.url) as client:
            left = list(client.scan_iter(match="bench*"))
    assert out["plain"]["n"] == out["durable"]["n"] == 30
    assert 0 < out["plain"]["p50"] <= out["plain"]["max"]
    assert 0 < out["durable"]["p50"] <= out["durable"]["max"]
    block = out["plain_block"]
    assert block["calls"] == 30 and block["worker_cpu_us"] is not None
    assert block["commands"]["xadd"]["calls"] == pytest.approx(2.0)
    assert block["replica_cpu_us"] is not None and block["replica_cpu_us"] >= 0  # read, if tiny
    assert block["redis_cpu_us"] == pytest.approx(block["primary_cpu_us"] + block["replica_cpu_us"])
    assert left == []
