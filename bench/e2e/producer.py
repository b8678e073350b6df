"""The load generator: producer processes that XADD states, open loop at a
fixed rate or as fast as they can, each state's ``id`` carrying its send time.
The states go round a list of routes (the Redis node, the states stream and the
pair): one route on a single Redis; on a cluster one per pair, each to its
shard's stream on the node that holds it."""

from __future__ import annotations

import gc
import multiprocessing as mp
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, cast

import numpy as np
import redis

from agent.features import STATE_DIM
from bench.e2e.scenarios import MAX_SECONDS


class _RawConnection(Protocol):
    """The part of redis-py's (untyped) ``Connection`` the producer drives by hand."""

    def connect(self) -> None: ...
    def pack_commands(self, commands: list[tuple[str | bytes, ...]]) -> list[bytes]: ...
    def send_packed_command(self, command: list[bytes]) -> None: ...
    def read_response(self) -> object: ...


@dataclass(frozen=True)
class Route:
    """Where a state goes: the node's URL, the states stream there, its pair (None: no field)."""

    url: str
    stream: str
    pair: str | None = None


def produce(
    routes: list[Route], tag: str, rate: float | None, count: int, start_ns: int, seed: int, out: Any
) -> None:
    """XADD ``count`` states, state ``i`` along ``routes[i % len(routes)]``; each
    ``id`` is ``tag:index:send-time-ns``. Puts ``(tag, sent, cpu seconds)`` on
    ``out`` when done. Runs in its own process."""
    # One connection per node, commands packed in one write per node and replies
    # read raw: the load generator stays as light as it can, so the cores go to
    # what is measured.
    clients = {url: redis.Redis.from_url(url) for url in dict.fromkeys(r.url for r in routes)}
    conns = {url: cast(_RawConnection, c.connection_pool.get_connection()) for url, c in clients.items()}
    for conn in conns.values():
        conn.connect()  # now: the first state must not carry the connection set-up
    rng = np.random.default_rng(seed)
    states = [rng.standard_normal(STATE_DIM).astype("<f4").tobytes() for _ in range(64)]
    deadline = time.monotonic() + MAX_SECONDS
    gc.freeze()
    gc.disable()  # bounded run: no collector pauses in the sender's pacing
    while time.time_ns() < start_ns:
        time.sleep(min(0.01, max(0.0, (start_ns - time.time_ns()) / 1e9)))
    sent = 0
    cpu0 = time.process_time()
    while sent < count and time.monotonic() < deadline:
        if rate:
            now = time.time_ns()
            due = min(count, int((now - start_ns) * rate / 1e9) + 1)
            if due <= sent:
                time.sleep(max(0.0, (start_ns + sent * 1e9 / rate - now) / 1e9))
                continue
            n = min(due - sent, 500)
        else:
            n = min(count - sent, 200)
        # The send time is taken as the commands leave: a late wake-up of this
        # process is not the system's latency (the pacing still keeps the rate).
        stamp = time.time_ns()
        batches: dict[str, list[tuple[str | bytes, ...]]] = {url: [] for url in conns}
        for i in range(sent, sent + n):
            route = routes[i % len(routes)]
            fields: tuple[str | bytes, ...] = ("state_f32", states[i % 64], "id", f"{tag}:{i}:{stamp}")
            if route.pair is not None:
                fields += ("pair", route.pair)
            batches[route.url].append(("XADD", route.stream, "*", *fields))
        for url, commands in batches.items():
            if commands:
                conns[url].send_packed_command(conns[url].pack_commands(commands))
        for url, commands in batches.items():
            for _ in commands:
                conns[url].read_response()  # an error reply raises: the run stops with it
        sent += n
    out.put((tag, sent, time.process_time() - cpu0))
    for url, client in clients.items():
        client.connection_pool.release(conns[url])  # type: ignore[arg-type]  # the Connection cast above
        client.close()


class Producers:
    """``n`` producer processes sharing ``total`` states (and ``rate``) sent along
    ``routes``, ids tagged ``{tag}{i}``, all starting at ``start_ns``. A context
    manager: on the way out, any producer still running is terminated (by its
    PID) and joined."""

    def __init__(
        self, routes: list[Route], tag: str, total: int, n: int, rate: float | None, start_ns: int
    ) -> None:
        ctx = mp.get_context("spawn")
        self._out = ctx.Queue()
        per = [total // n + (1 if i < total % n else 0) for i in range(n)]
        self._procs = [
            ctx.Process(
                target=produce,
                args=(routes, f"{tag}{i}", rate / n if rate else None, count, start_ns, i, self._out),
                daemon=True,
            )
            for i, count in enumerate(per)
        ]

    def __enter__(self) -> Producers:
        for p in self._procs:
            p.start()
        return self

    def finish(self) -> tuple[int, float]:
        """Wait for every producer: the states they sent and the CPU seconds they used."""
        sent, cpu = 0, 0.0
        for _ in self._procs:
            _, n, seconds = self._out.get(timeout=MAX_SECONDS)
            sent += n
            cpu += seconds
        for p in self._procs:
            p.join(timeout=30)
        return sent, cpu

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for p in self._procs:
            if p.pid is None:
                continue  # never started
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
