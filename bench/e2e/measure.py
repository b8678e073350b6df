"""How one scenario is measured: ``live`` (producers send while the collector reads
every answer) or ``drain`` (the states queued first, then the workers timed
emptying the queue); ``run_scenario`` sets up and tears down around either."""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis

from agent.features import STATE_DIM
from bench.e2e.cpu import cpu_seconds, cpu_used
from bench.e2e.lanes import Topology
from bench.e2e.producer import Producers
from bench.e2e.redis_stats import NodeReading, node_usage, read_nodes
from bench.e2e.result import Result, tally
from bench.e2e.scenarios import MAX_SECONDS, Scenario
from bench.e2e.workers import Keys, Workers

Entry = tuple[bytes, dict[bytes, bytes]]


def read_after(
    client: redis.Redis, stream: str, last: bytes | str, count: int, block: int | None
) -> list[Entry]:
    """XREAD: up to ``count`` entries of ``stream`` after id ``last``, waiting up to
    ``block`` ms (None: not at all; the client returns bytes: no ``decode_responses``)."""
    resp = cast("list[tuple[bytes, list[Entry]]]", client.xread({stream: last}, count=count, block=block))
    return resp[0][1] if resp else []


@dataclass(frozen=True)
class Stage:
    """What a measurement works on: the scenario, its Redis (``client``: the admin
    client, a cluster client on a cluster), its lanes, keys and workers."""

    scenario: Scenario
    url: str
    client: redis.Redis | redis.RedisCluster
    topology: Topology
    keys: Keys
    workers: Workers

    def readings(self) -> tuple[dict[str, float | None], dict[str, NodeReading]]:
        nodes = self.topology.nodes
        return cpu_seconds(self.workers.pids, nodes.values()), read_nodes(nodes)

    def redis_usage(
        self, before: dict[str, NodeReading], after: dict[str, NodeReading], by_shard: dict[int, int]
    ) -> list[dict[str, Any]]:
        topo = self.topology
        shards = {u: topo.shards_of(u) for u in topo.roles}
        return node_usage(before, after, topo.roles, shards, by_shard, topo.primary_of)


def run_scenario(url: str, model: Path, sc: Scenario, log_dir: Path, warmup: int) -> Result:
    """Measure ``sc`` against the Redis at ``url`` (a node of the cluster when
    ``sc.cluster``) with workers serving ``model``; the workers are stopped and
    every key written is deleted, whatever happens."""
    keys = Keys.new()
    with contextlib.ExitStack() as stack:
        topology = stack.enter_context(Topology(url, keys, sc))
        client = topology.admin
        stack.callback(keys.delete_all, client)  # after the workers stopped writing
        workers = stack.enter_context(Workers(url, model, keys, sc, log_dir))
        stage = Stage(sc, url, client, topology, keys, workers)
        if sc.drain:
            return drain(stage)
        workers.start(client)
        if warmup:
            live(stage, warmup, None, warmup=True)
        return live(stage, sc.total, sc.rate)


def backlog_now(stage: Stage) -> int:
    """Entries not yet answered, over every lane: the group's lag plus its pending."""
    total = 0
    for lane in stage.topology.lanes:
        groups = stage.client.xinfo_groups(lane.states)
        total += sum((g.get("lag") or 0) + g["pending"] for g in groups[:1])
    return total


def live(stage: Stage, total: int, rate: float | None, warmup: bool = False) -> Result:
    """Producers send ``total`` states (at ``rate``, or as fast as they can) while
    this process reads every answer, lane by lane; a warm-up's answers are tagged apart."""
    sc, topo = stage.scenario, stage.topology
    lanes = topo.lanes
    start_ns = time.time_ns() + int(0.3e9)
    tag = "w" if warmup else "m"
    last: list[bytes | str] = []
    for lane in lanes:
        client = topo.client(lane)
        last.append(
            client.xinfo_stream(lane.results)["last-generated-id"] if client.exists(lane.results) else "0-0"
        )
    by_shard = dict.fromkeys((lane.shard for lane in lanes), 0)
    with Producers(topo.routes(), tag, total, sc.producers, rate, start_ns) as producers:
        cpu0, nodes0 = stage.readings()
        own0 = time.process_time()
        gc.collect()
        gc.freeze()  # the collector's own GC pauses would show up as latency
        gc.disable()
        # In the loop the answers are only kept: parsing them here would take CPU
        # from the workers and Redis on the same cores while they are measured.
        got: list[tuple[int, dict[bytes, bytes]]] = []
        backlog: list[tuple[float, int]] = []
        deadline = time.monotonic() + MAX_SECONDS
        next_sample = 0.0
        turn = 0
        try:
            while len(got) < total and time.monotonic() < deadline:
                # One lane: wait on it. Several: read each without waiting, and
                # when none had anything, wait a little on one of them in turn.
                block = 200 if len(lanes) == 1 else None
                found = [
                    (i, read_after(topo.client(ln), ln.results, last[i], 5000, block))
                    for i, ln in enumerate(lanes)
                ]
                if len(lanes) > 1 and not any(entries for _, entries in found):
                    i, turn = turn % len(lanes), turn + 1
                    found = [(i, read_after(topo.client(lanes[i]), lanes[i].results, last[i], 5000, 10))]
                now = time.time_ns()
                if not warmup and time.monotonic() >= next_sample:
                    backlog.append(((now - start_ns) / 1e9, backlog_now(stage)))
                    next_sample = time.monotonic() + 0.25
                for i, entries in found:
                    if entries:
                        last[i] = entries[-1][0]
                        by_shard[lanes[i].shard] += len(entries)
                        got += [(now, f) for _, f in entries]
        finally:
            gc.enable()
        own = time.process_time() - own0
        cpu1, nodes1 = stage.readings()
        sent, producer_cpu = producers.finish()
    t = tally(got, tag)
    wall = (t.last_read_ns - start_ns) / 1e9 if t.last_read_ns else float("nan")
    return Result.of(
        sc,
        t,
        sent=sent,
        wall_s=wall,
        throughput=t.received / wall if wall > 0 else 0.0,
        cpu_s=cpu_used(cpu0, cpu1, producers=producer_cpu, collector=own),
        backlog=backlog,
        sent_by=sc.duration if sc.rate else wall,
        redis_nodes=stage.redis_usage(nodes0, nodes1, by_shard),
    )


def drain(stage: Stage) -> Result:
    """Queue the scenario's states with no worker reading, start the workers with
    each lane's group held at the end of its stream, then release them together
    and time them emptying the queues (first result to last, by Redis's clock):
    the workers' throughput without a producer on the same cores."""
    sc, client, keys, topo = stage.scenario, stage.client, stage.keys, stage.topology
    lanes, total = topo.lanes, sc.total
    queued = total - len(lanes)  # and one more per lane, to wake its readers
    with Producers(topo.routes(), "m", queued, 1, None, time.time_ns()) as producers:
        producers.finish()
    for lane in lanes:
        client.xgroup_create(lane.states, keys.group, id="$", mkstream=True)
    stage.workers.start(client)
    # Read the counters before the group moves back: a worker whose blocking read
    # happens to end just then reads the queue at once, and its first batch's
    # results must fall inside the readings (they did not, once in a CI run).
    (cpu0, nodes0), own0 = stage.readings(), time.process_time()
    for lane in lanes:
        client.xgroup_setid(lane.states, keys.group, id="0")
    # One more entry per lane wakes every worker blocked on it at once (with a pair of
    # the lane's when the states carry pairs: a worker of pair models has no default).
    pair_of = {r.stream: r.pair for r in topo.routes()}
    for i, lane in enumerate(lanes):
        waker: dict[str, bytes | str] = {
            "state_f32": np.zeros(STATE_DIM, "<f4").tobytes(),
            "id": f"m0:{queued + i}:{time.time_ns()}",
        }
        if pair_of.get(lane.states):
            waker["pair"] = pair_of[lane.states] or ""
        client.xadd(lane.states, waker)  # type: ignore[arg-type]  # redis-py's field types
    # Results are read once all are in (the timing comes from their ids): reading
    # them meanwhile would take a core's third from the workers and Redis.
    deadline = time.monotonic() + MAX_SECONDS
    while sum(topo.client(lane).xlen(lane.results) for lane in lanes) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    (cpu1, nodes1), own = stage.readings(), time.process_time() - own0
    got: list[Entry] = []
    by_shard: dict[int, int] = {}
    first_ms, last_ms = [], []
    for lane in lanes:
        mine: list[Entry] = []
        last: bytes | str = b"0-0"
        while time.monotonic() < deadline:
            entries = read_after(topo.client(lane), lane.results, last, 5000, None)
            if not entries:
                break
            mine += entries
            last = entries[-1][0]
        by_shard[lane.shard] = len(mine)
        if mine:
            first_ms.append(int(mine[0][0].split(b"-")[0]))
            last_ms.append(int(mine[-1][0].split(b"-")[0]))
        got += mine
    wall = (max(last_ms) - min(first_ms)) / 1000 if got else 0.0
    return Result.of(
        sc,
        tally(((0, f) for _, f in got), "m"),
        sent=total,
        wall_s=wall,
        throughput=(len(got) - 1) / wall if wall > 0 else 0.0,
        cpu_s=cpu_used(cpu0, cpu1, producers=0.0, collector=own),
        redis_nodes=stage.redis_usage(nodes0, nodes1, by_shard),
    )
