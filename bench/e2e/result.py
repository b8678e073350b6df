"""One scenario's figures, the ``Result``, and the tally of the answers read back
from which both kinds of measurement (live and drain) build it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.e2e.redis_stats import per_state
from bench.e2e.scenarios import Scenario
from bench.stats import percentiles


def pct(values: list[float]) -> dict[str, float]:
    """Percentiles, or {} when there is nothing to summarize."""
    return {k: v for k, v in percentiles(values).items() if k != "n"} if values else {}


@dataclass
class Tally:
    """The answers to one tag's states, each id counted once: a second answer to
    an id is an error, as is any status but ok."""

    received: int = 0
    errors: int = 0
    e2e_ms: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)
    first_read_ns: int = 0
    last_read_ns: int = 0


def tally(answers: Iterable[tuple[int, dict[bytes, bytes]]], tag: str) -> Tally:
    """Count ``(read time ns, result fields)`` pairs whose id starts with ``tag``.
    A read time of 0 means "not timed" (drain): no end-to-end latency then."""
    t, seen = Tally(), set()
    for read_ns, f in answers:
        cid = f[b"id"].decode()
        if not cid.startswith(tag):
            continue  # a late warm-up answer
        if cid in seen:
            t.errors += 1  # a duplicate
            continue
        seen.add(cid)
        if read_ns:
            t.e2e_ms.append((read_ns - int(cid.rsplit(":", 1)[1])) / 1e6)
            t.first_read_ns = t.first_read_ns or read_ns
            t.last_read_ns = read_ns
        t.errors += f[b"status"] != b"ok"
        t.queue_ms.append(float(f[b"queue_ms"]))
        t.infer_ms.append(float(f.get(b"infer_ms", b"nan")))
        t.latency_ms.append(float(f.get(b"latency_ms", b"nan")))
        t.batch.append(int(f.get(b"batch_size", b"0")))
    t.received = len(seen)
    return t


@dataclass(frozen=True)
class Result:
    """Every figure of one scenario (latencies in ms, keyed p50/p95/p99/max/mean)."""

    scenario: Scenario
    cpu_s: dict[str, float | None]  # CPU seconds per role: workers, redis, producers, collector
    sent: int
    received: int  # distinct ids answered
    errors: int  # non-ok answers and duplicates
    throughput: float  # states/s
    wall_s: float
    e2e_ms: dict[str, float]  # producer's send → collector's read; {} when drained
    queue_ms: dict[str, float]
    infer_ms: dict[str, float]
    latency_ms: dict[str, float]
    mean_batch: float
    backlog_max: int  # group lag + pending, the most sampled
    backlog_end_of_send: int  # ... the last sample while states were still being sent
    redis_nodes: list[dict[str, Any]] = field(default_factory=list)  # bench.e2e.redis_stats.node_usage

    @property
    def redis_per_state(self) -> dict[str, Any]:
        """Redis CPU and command time per state answered, over every node."""
        return per_state(self.redis_nodes, self.received)

    @property
    def worker_cpu_us(self) -> float | None:
        """The workers' CPU µs per state answered."""
        cpu = self.cpu_s.get("workers")
        return 1e6 * cpu / self.received if cpu is not None and self.received else None

    @property
    def exactly_once(self) -> bool:
        return self.received == self.sent and self.errors == 0

    @classmethod
    def of(
        cls,
        scenario: Scenario,
        t: Tally,
        *,
        sent: int,
        wall_s: float,
        throughput: float,
        cpu_s: dict[str, float | None],
        backlog: list[tuple[float, int]] | None = None,
        sent_by: float = 0.0,
        redis_nodes: list[dict[str, Any]] | None = None,
    ) -> Result:
        """``backlog`` holds (seconds since the start, backlog) samples; ``sent_by``
        is when sending ended, in the same seconds."""
        samples = backlog or []
        return cls(
            scenario=scenario,
            cpu_s=cpu_s,
            sent=sent,
            received=t.received,
            errors=t.errors,
            throughput=throughput,
            wall_s=wall_s,
            e2e_ms=pct(t.e2e_ms),
            queue_ms=pct(t.queue_ms),
            infer_ms=pct(t.infer_ms),
            latency_ms=pct(t.latency_ms),
            mean_batch=float(np.mean(t.batch)) if t.batch else 0.0,
            backlog_max=max((b for _, b in samples), default=0),
            backlog_end_of_send=next((b for s, b in reversed(samples) if s <= sent_by), 0),
            redis_nodes=redis_nodes or [],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.to_json(),
            "cpu_s": self.cpu_s,
            "sent": self.sent,
            "received": self.received,
            "errors": self.errors,
            "exactly_once": self.exactly_once,
            "throughput": self.throughput,
            "wall_s": self.wall_s,
            "e2e_ms": self.e2e_ms,
            "queue_ms": self.queue_ms,
            "infer_ms": self.infer_ms,
            "latency_ms": self.latency_ms,
            "mean_batch": self.mean_batch,
            "backlog_max": self.backlog_max,
            "backlog_end_of_send": self.backlog_end_of_send,
            "worker_cpu_us": self.worker_cpu_us,
            "redis_per_state": self.redis_per_state,
            "redis_nodes": self.redis_nodes,
        }
