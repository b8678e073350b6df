"""The control stream: every worker reads every entry (plain XREAD, no group)
and answers ``reload``, ``status`` and ``benchmark`` on the replies stream."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from redis.typing import EncodableT, FieldT

from worker.connection import xread
from worker.heartbeat import live_workers
from worker.model import ServedModel
from worker.retry import TRANSIENT, Backoff, retrying
from worker.state import ServerState

logger = logging.getLogger(__name__)

REPLIES_MAXLEN = 1000
MAX_BENCH_ITERS = 10_000
MAX_BENCH_BATCH = 1024
MAX_BENCH_S = 30.0  # one benchmark's wall time at most: other control commands wait behind it
MAX_CONTROL_FIELD = 1024


def status(state: ServerState) -> dict[str, Any]:
    """What ``cmd=status`` answers: the model and where it came from (source, name,
    version, run id), the source's own state (the registry's: up, resolved version,
    failed versions), backend, counters, last reload error."""
    m, st, models = state.models.current, state.stats, state.models
    return {
        "worker": state.consumer,
        "model": None
        if m is None
        else {
            "source": m.provenance.get("source", "folder"),
            "name": m.provenance.get("name"),
            "version": m.version,
            "run_id": m.run_id,
            "path": m.path,
            "sha256": m.sha256,
            "mtime_utc": m.mtime_utc,
            "backend": m.backend,
            "state_dim": m.state_dim,
            "contract_id": m.contract_id,
            "contract": m.contract.model_dump(mode="json"),
            "jit_error": m.jit_error,
            "metadata": m.metadata,
        },
        "source": models.source.status(),
        # Every model: the default, one per pair, challengers; with the ok answers of each.
        "models": [
            {
                **row,
                "answered": None if row.get("route") is None else st.by_model.get(row["route"], 0),
            }
            for row in models.status()
        ],
        "shadow": None if state.shadow is None else state.shadow.status(),
        "jit_requested": models.jit,
        "reloads": models.reloads,
        "reload_failures": models.reload_failures,
        "last_reload_error": models.last_error,
        "processed": st.processed,
        "results": dict(st.results),
        "batches": st.batches,
        "dead_lettered": st.dead_lettered,
        "reclaimed": st.reclaimed,
        "failed": st.failed,
        "redis_errors": st.redis_errors,
        # Pair labels the live workers of this stream answer with different models, by worker.
        "fleet": {"divergent": state.fleet_divergent},
        # Why Redis refuses writes (the worker then reads no new states), or None.
        "writes_refused": state.refusal,
        "answers_refused": st.writes_refused,
        "uptime_s": round(time.time() - st.started_at, 3),
        "redis": state.settings.redis_url_masked,
        # With REDIS_CLUSTER: the shards this worker reads, of SHARDS (check every shard has a reader).
        "shards": {"served": state.settings.served_shards, "of": state.settings.shards}
        if state.settings.redis_cluster
        else None,
    }


class BenchmarkStopped(ValueError):
    """The benchmark ended early: the worker is stopping, or it ran past MAX_BENCH_S."""


def benchmark(
    model: ServedModel,
    batch_sizes: list[int],
    warmup: int,
    iters: int,
    stopping: Callable[[], bool] = lambda: False,
    budget_s: float = MAX_BENCH_S,
) -> dict[str, Any]:
    """Warm-up + timed calls of the live model; p50/p95/p99 in ms per batch size. Blocking
    (run in a thread, which asyncio cannot cancel): so it looks at ``stopping`` and at its
    time budget between calls, and a SIGTERM is not held up past one call."""
    deadline = time.monotonic() + budget_s

    def check() -> None:
        if stopping():
            raise BenchmarkStopped("stopped: the worker is shutting down")
        if time.monotonic() > deadline:
            raise BenchmarkStopped(f"stopped after {budget_s:g} s: ask for fewer batch_sizes or iters")

    out: dict[str, Any] = {
        "backend": model.backend,
        "model_sha256": model.sha256,
        "warmup": warmup,
        "iters": iters,
        "batches": {},
    }
    rng = np.random.default_rng(0)
    for bs in batch_sizes:
        rows = rng.standard_normal((bs, model.state_dim)).astype(np.float32)
        for _ in range(warmup):
            check()
            model.infer(rows)
        samples = np.empty(iters)
        for i in range(iters):
            check()
            t0 = time.perf_counter()
            model.infer(rows)
            samples[i] = time.perf_counter() - t0
        p50, p95, p99 = np.percentile(samples * 1e3, [50, 95, 99])
        out["batches"][str(bs)] = {
            "p50_ms": round(float(p50), 4),
            "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4),
            "mean_ms": round(float(samples.mean() * 1e3), 4),
        }
    return out


def _int(fields: dict[bytes, bytes], name: str, default: int, low: int, high: int) -> int:
    raw = fields.get(name.encode())
    if raw is None:
        return default
    value = int(raw)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


class Control:
    """Reads the control stream from the moment it starts and answers commands."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.s = state.settings
        self.redis = state.redis
        self._last_id: str | None = None

    async def _read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if self._last_id is None:
            last: Any = await self.redis.xrevrange(self.s.control_stream, count=1)
            self._last_id = last[0][0].decode() if last else "0-0"
        resp: Any = await xread(self.redis, self.s.control_stream, self._last_id, 16, self.s.block_ms)
        return resp[0][1] if resp else []

    async def run(self) -> None:
        backoff = Backoff()
        while not self.state.stop.is_set():
            # Quiet retries: the consume loop reports an outage, once per retry.
            entries = await retrying(
                self._read, self.state.stop, "reading control", backoff=backoff, loud=False
            )
            for eid, fields in entries or []:
                self._last_id = eid.decode()
                try:
                    await self.handle(self._last_id, fields)
                except TRANSIENT as exc:
                    logger.warning("control reply to %s lost: %s", self._last_id, exc)

    async def handle(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        target = fields.get(b"worker")
        if target is not None and target.decode("utf-8", "replace") != self.s.consumer:
            return
        cmd = fields.get(b"cmd", b"")[:64].decode("utf-8", "replace")
        reply: dict[str, Any]
        out: dict[FieldT, EncodableT]
        try:
            if any(len(v) > MAX_CONTROL_FIELD for v in fields.values()):
                raise ValueError(f"a field is over {MAX_CONTROL_FIELD} bytes")
            if cmd == "reload":
                failures = self.state.models.reload_failures
                swapped = await self.state.models.check(force=True)
                m = self.state.models.current
                if not swapped and self.state.models.reload_failures > failures:
                    kept = f"; still serving {m.sha256}" if m else ""
                    raise ValueError(f"reload failed: {self.state.models.last_error}{kept}")
                reply = {
                    "swapped": swapped,
                    "model_sha256": m.sha256 if m else None,
                    "last_reload_error": self.state.models.last_error,
                }
            elif cmd == "status":
                reply = status(self.state)
                reply["live_workers"] = await live_workers(self.state)
            elif cmd == "benchmark":
                model = self.state.models.current
                if model is None:
                    raise ValueError("no model is loaded")
                sizes_raw = fields.get(b"batch_sizes", b"1,8,32,128").decode("utf-8", "replace")
                try:
                    sizes = [int(x) for x in sizes_raw.split(",") if x.strip()]
                except ValueError:
                    raise ValueError(
                        f"batch_sizes {sizes_raw[:40]!r} is not a list of integers, e.g. 1,8,32,128"
                    ) from None
                if not sizes or len(sizes) > 8 or not all(1 <= b <= MAX_BENCH_BATCH for b in sizes):
                    raise ValueError(f"batch_sizes must be 1 to 8 sizes in 1..{MAX_BENCH_BATCH}")
                warmup = _int(fields, "warmup", 50, 0, MAX_BENCH_ITERS)
                iters = _int(fields, "iters", 500, 1, MAX_BENCH_ITERS)
                reply = await asyncio.to_thread(
                    benchmark, model, sizes, warmup, iters, self.state.stop.is_set
                )
            else:
                raise ValueError(f"unknown cmd {cmd!r}; expected reload, status or benchmark")
            out = {"status": "ok", "data": json.dumps(reply, default=str)}
        except ValueError as exc:
            out = {"status": "error", "detail": str(exc)}
        request_id = fields.get(b"id", entry_id.encode())[:128].decode("utf-8", "replace")
        out.update({"worker": self.s.consumer, "cmd": cmd, "request_id": request_id, "entry_id": entry_id})
        await self.redis.xadd(self.s.control_replies, out, maxlen=REPLIES_MAXLEN, approximate=True)
        logger.info("control %s (%s): %s", cmd, request_id, out["status"])
