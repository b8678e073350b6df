"""What one state costs when a strategy sends it alone: ``ActionClient.act`` round
trips on the cluster through one worker, plain and ``durable=True`` (XADD, then
WAIT for one replica), alternating call by call so host noise hits both alike;
then a block of plain calls with the CPU they cost (worker, and Redis by node
and command): the per-state cost with no batching anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.features import STATE_DIM
from bench.e2e.cpu import cpu_seconds
from bench.e2e.lanes import Topology, pair_labels
from bench.e2e.redis_stats import node_usage, per_state, read_nodes
from bench.e2e.scenarios import MAX_SECONDS, Scenario
from bench.e2e.workers import Keys, Workers
from bench.stats import percentiles
from worker.client import ActionClient

WARMUP = 50  # calls per mode before timing: connections, reply readers, the worker's first batches


async def _alternate(
    url: str, keys: Keys, shards: int, count: int, topology: Topology, workers: Workers
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    states = [rng.standard_normal(STATE_DIM).astype(np.float32) for _ in range(64)]
    pairs = pair_labels(shards, 8 * shards)
    options: dict[str, Any] = {
        "cluster": True,
        "shards": shards,
        "states_stream": keys.states,
        "reply_prefix": keys.reply_prefix,
        "timeout": 10.0,
    }
    times: dict[str, list[float]] = {"plain": [], "durable": []}
    async with (
        ActionClient(url, **options) as plain,
        ActionClient(url, durable=True, **options) as durable,
    ):
        clients = {"plain": plain, "durable": durable}
        deadline = time.monotonic() + MAX_SECONDS
        for i in range(WARMUP + count):
            if time.monotonic() > deadline:
                break
            for name in ("plain", "durable") if i % 2 else ("durable", "plain"):
                t0 = time.perf_counter_ns()
                await clients[name].act(states[i % 64], pairs[i % len(pairs)])
                if i >= WARMUP:
                    times[name].append((time.perf_counter_ns() - t0) / 1e6)
        resent = durable.resent
        # A block of plain calls alone, with the CPU each role spent on it.
        nodes = topology.nodes
        cpu0, nodes0 = cpu_seconds(workers.pids, nodes.values()), read_nodes(nodes)
        done = 0
        for i in range(count):
            if time.monotonic() > deadline:
                break
            await plain.act(states[i % 64], pairs[i % len(pairs)])
            done += 1
        cpu1, nodes1 = cpu_seconds(workers.pids, nodes.values()), read_nodes(nodes)
    out: dict[str, Any] = {name: percentiles(ms) for name, ms in times.items()}
    out["durable_resent"] = resent
    usage = node_usage(nodes0, nodes1, topology.roles, {u: topology.shards_of(u) for u in topology.roles}, {})
    w0, w1 = cpu0["workers"], cpu1["workers"]
    replicas = [n["cpu_s"] for n in usage if n["role"] == "replica"]
    out["plain_block"] = {
        "calls": done,
        "worker_cpu_us": 1e6 * (w1 - w0) / done if done and w0 is not None and w1 is not None else None,
        **per_state(usage, done),
        "replica_cpu_us": 1e6 * sum(replicas) / done if done and None not in replicas else None,
    }
    return out


def act_latency(
    url: str, model: Path, shards: int, count: int, backend: str, log_dir: Path
) -> dict[str, Any]:
    """``count`` timed ``act`` calls of each mode (ms percentiles) through one worker
    serving every shard of the cluster at ``url``; the worker is stopped and the
    keys deleted whatever happens."""
    keys = Keys.new()
    sc = Scenario("act latency", workers=1, backend=backend, cluster=True, shards=shards)
    with contextlib.ExitStack() as stack:
        topology = stack.enter_context(Topology(url, keys, sc))
        stack.callback(keys.delete_all, topology.admin)  # after the worker stopped writing
        workers = stack.enter_context(Workers(url, model, keys, sc, log_dir))
        workers.start(topology.admin)
        return asyncio.run(_alternate(url, keys, shards, count, topology, workers))
