"""How one scenario is measured: ``live`` (producers send while the collector reads
every answer) or ``drain`` (the states queued first, then the workers timed
emptying the queue); ``run_scenario`` sets up and tears down around either."""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import redis

from agent.features import STATE_DIM
from bench.e2e.cpu import cpu_seconds, cpu_used
from bench.e2e.producer import Producers
from bench.e2e.result import Result, tally
from bench.e2e.scenarios import MAX_SECONDS, Scenario
from bench.e2e.workers import Keys, Workers

Entry = tuple[bytes, dict[bytes, bytes]]


def read_after(client: redis.Redis, stream: str, last: bytes | str, count: int, block: int) -> list[Entry]:
    """XREAD: up to ``count`` entries of ``stream`` after id ``last``, waiting up to
    ``block`` ms (the client returns bytes: no ``decode_responses``)."""
    resp = cast("list[tuple[bytes, list[Entry]]]", client.xread({stream: last}, count=count, block=block))
    return resp[0][1] if resp else []


@dataclass(frozen=True)
class Stage:
    """What a measurement works on: the scenario, its Redis, its keys and workers."""

    scenario: Scenario
    url: str
    client: redis.Redis
    keys: Keys
    workers: Workers


def run_scenario(url: str, model: Path, sc: Scenario, log_dir: Path, warmup: int) -> Result:
    """Measure ``sc`` against the Redis at ``url`` with workers serving ``model``;
    the workers are stopped and every key written is deleted, whatever happens."""
    keys = Keys.new()
    with contextlib.ExitStack() as stack:
        client = redis.Redis.from_url(url)
        stack.callback(client.close)
        stack.callback(keys.delete_all, client)  # after the workers stopped writing
        workers = stack.enter_context(Workers(url, model, keys, sc, log_dir))
        stage = Stage(sc, url, client, keys, workers)
        if sc.drain:
            return drain(stage)
        workers.start(client)
        if warmup:
            live(stage, warmup, None, warmup=True)
        return live(stage, sc.total, sc.rate)


def live(stage: Stage, total: int, rate: float | None, warmup: bool = False) -> Result:
    """Producers send ``total`` states (at ``rate``, or as fast as they can) while
    this process reads every answer; a warm-up's answers are tagged apart."""
    sc, client, keys = stage.scenario, stage.client, stage.keys
    start_ns = time.time_ns() + int(0.3e9)
    tag = "w" if warmup else "m"
    stream = keys.actions
    last: bytes | str = client.xinfo_stream(stream)["last-generated-id"] if client.exists(stream) else "0-0"
    with Producers(stage.url, keys.states, tag, total, sc.producers, rate, start_ns) as producers:
        cpu0 = cpu_seconds(stage.workers.pids, client)
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
        try:
            while len(got) < total and time.monotonic() < deadline:
                entries = read_after(client, stream, last, 5000, 200)
                now = time.time_ns()
                if not warmup and time.monotonic() >= next_sample:
                    g = client.xinfo_groups(keys.states)
                    backlog.append(
                        ((now - start_ns) / 1e9, (g[0].get("lag") or 0) + g[0]["pending"]) if g else (0, 0)
                    )
                    next_sample = time.monotonic() + 0.25
                if entries:
                    last = entries[-1][0]
                    got += [(now, f) for _, f in entries]
        finally:
            gc.enable()
        own = time.process_time() - own0
        cpu1 = cpu_seconds(stage.workers.pids, client)
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
    )


def drain(stage: Stage) -> Result:
    """Queue the scenario's states with no worker reading, start the workers with
    the group held at the end of the stream, then release them together and time
    them emptying the queue (first result to last, by Redis's clock): the
    workers' throughput without a producer on the same cores."""
    sc, client, keys = stage.scenario, stage.client, stage.keys
    total = sc.total
    with Producers(stage.url, keys.states, "m", total - 1, 1, None, time.time_ns()) as producers:
        producers.finish()
    client.xgroup_create(keys.states, keys.group, id="$")
    stage.workers.start(client)
    client.xgroup_setid(keys.states, keys.group, id="0")
    cpu0, own0 = cpu_seconds(stage.workers.pids, client), time.process_time()
    # One more entry wakes every worker blocked on the stream at once.
    client.xadd(
        keys.states,
        {"state_f32": np.zeros(STATE_DIM, "<f4").tobytes(), "id": f"m0:{total - 1}:{time.time_ns()}"},
    )
    stream, last = keys.actions, b"0-0"
    # Results are read once all are in (the timing comes from their ids): reading
    # them meanwhile would take a core's third from the workers and Redis.
    deadline = time.monotonic() + MAX_SECONDS
    while client.xlen(stream) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu1, own = cpu_seconds(stage.workers.pids, client), time.process_time() - own0
    got: list[Entry] = []
    while len(got) < total and time.monotonic() < deadline:
        got += read_after(client, stream, last, 5000, 200)
        last = got[-1][0] if got else last
    first_ms, last_ms = (int(got[i][0].split(b"-")[0]) for i in (0, -1)) if got else (0, 0)
    wall = (last_ms - first_ms) / 1000
    return Result.of(
        sc,
        tally(((0, f) for _, f in got), "m"),
        sent=total,
        wall_s=wall,
        throughput=(len(got) - 1) / wall if wall > 0 else 0.0,
        cpu_s=cpu_used(cpu0, cpu1, producers=0.0, collector=own),
    )
