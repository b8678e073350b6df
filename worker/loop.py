"""The consume loop, the hot path: read a batch with XREADGROUP, decode it,
infer once, encode, then publish every result and acknowledge every entry in
one MULTI/EXEC round trip."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.model import ModelManager
from worker.protocol import (
    Limits,
    Request,
    dead_letter_fields,
    decode_entry,
    entry_time_ms,
    error_fields,
    ms,
    ok_fields,
)
from worker.settings import Settings

logger = logging.getLogger(__name__)

DEAD_LETTER_CODES = frozenset({"invalid_state", "too_large", "internal"})
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass
class Stats:
    """Counters a status reply and the metrics read."""

    results: Counter[str] = field(default_factory=Counter)  # "ok" or the error code
    batches: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    redis_errors: int = 0
    started_at: float = field(default_factory=time.time)

    @property
    def processed(self) -> int:
        return sum(self.results.values())


BatchObserver = Callable[[list[Request], float, float, list[float]], None]


class Backoff:
    """Exponential backoff with full jitter, reset after a success."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        self.attempt += 1
        return random.uniform(self.base, min(self.cap, self.base * 2 ** self.attempt))

    def reset(self) -> None:
        self.attempt = 0


class Worker:
    """One consumer in the group. ``run()`` returns when stopped or, in bounded
    mode, after ``max_messages`` entries or (``burst``) when the stream is drained."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        models: ModelManager,
        stop: asyncio.Event | None = None,
        max_messages: int | None = None,
        burst: bool = False,
    ) -> None:
        self.s = settings
        self.redis = redis
        self.models = models
        self.stop = stop or asyncio.Event()
        self.max_messages = max_messages
        self.burst = burst
        self.stats = Stats()
        self.observers: list[BatchObserver] = []
        self.limits = Limits(
            max_field_bytes=settings.max_field_bytes,
            default_stream=settings.results_stream,
            reply_prefix=settings.reply_prefix,
            default_ttl_ms=settings.state_ttl_ms,
        )
        # After a start or a lost connection, first re-read our own pending
        # entries (XREADGROUP id 0): they were read but maybe never answered.
        self._own_pending = True

    # -- set-up --------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.s.states_stream, self.s.group, id="0", mkstream=True)
            logger.info("created consumer group %s on %s", self.s.group, self.s.states_stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff()
        await self._retrying(self.ensure_group, backoff)
        while not self.stop.is_set():
            if self.max_messages is not None and self.stats.processed >= self.max_messages:
                break
            count = self.s.read_count
            if self.max_messages is not None:
                count = min(count, self.max_messages - self.stats.processed)
            history = self._own_pending
            try:
                entries = await self._read(count)
                if entries:
                    await self.process(entries)
                backoff.reset()
            except TRANSIENT as exc:
                await self._on_redis_error(exc, backoff)
                continue
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream or group was deleted under us
                    logger.warning("consumer group vanished (%s); recreating it", exc)
                    await self._retrying(self.ensure_group, backoff)
                    continue
                raise
            if not entries and self.burst and not history:
                break  # bounded mode: the stream is drained

    async def _read(self, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        start = "0" if self._own_pending else ">"
        # No BLOCK for our own history; a short one otherwise (below the socket timeout).
        block = None if self._own_pending else self.s.block_ms
        if self.burst and not self._own_pending:
            block = None
        resp = await self.redis.xreadgroup(
            self.s.group, self.s.consumer, {self.s.states_stream: start}, count=count, block=block
        )
        entries = resp[0][1] if resp else []
        if self._own_pending:
            # History entries whose payload was deleted come back as (id, None).
            entries = [(eid, f if f is not None else {}) for eid, f in entries]
            if not entries:
                self._own_pending = False
        return entries

    async def process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Answer and acknowledge every entry of one read, in one MULTI/EXEC."""
        s = self.s
        t_read = time.perf_counter()
        now_ms = time.time() * 1000.0
        model = self.models.current  # one model for the whole batch
        state_dim = model.state_dim if model is not None else None
        reqs = [decode_entry(eid, f, state_dim, now_ms, self.limits) for eid, f in entries]
        valid = [r for r in reqs if r.error is None]
        actions: list[float] = []
        infer_s = 0.0
        if valid and model is None:
            for r in valid:
                r.fail("model_unavailable", "no model is loaded; the worker is waiting for a checkpoint")
        elif valid:
            rows = np.stack([r.row for r in valid])  # type: ignore[misc]
            t0 = time.perf_counter()
            try:
                actions = model.infer(rows).tolist()
            except Exception as exc:  # noqa: BLE001 - answer every entry, never die
                logger.exception("inference failed for a batch of %d", len(valid))
                for r in valid:
                    r.fail("internal", f"inference failed: {type(exc).__name__}")
            infer_s = time.perf_counter() - t0
        latency = time.perf_counter() - t_read
        infer_ms, lat_ms, batch = ms(infer_s), ms(latency), str(len(reqs))
        worker = s.consumer
        raw = dict(entries)
        queue: list[float] = []
        next_action = iter(actions)
        pipe = self.redis.pipeline(transaction=True)
        for r in reqs:
            q = max(0.0, now_ms - entry_time_ms(r.entry_id))
            queue.append(q)
            timing = {"queue_ms": f"{q:.3f}", "infer_ms": infer_ms, "latency_ms": lat_ms,
                      "batch_size": batch}
            if r.error is None:
                fields = ok_fields(r, worker, next(next_action), s.dead_band, model.fields, timing)
            else:
                fields = error_fields(r, worker, timing)
                if r.error in DEAD_LETTER_CODES:
                    pipe.xadd(s.dead_stream, dead_letter_fields(
                        r.entry_id, raw.get(r.entry_id.encode(), {}), s.states_stream, worker,
                        r.error, r.detail), maxlen=s.dead_maxlen, approximate=True)
            pipe.xadd(r.reply_to, fields, maxlen=s.results_maxlen, approximate=True)
        pipe.xack(s.states_stream, s.group, *[r.entry_id for r in reqs])
        await pipe.execute()
        self.stats.batches += 1
        for r in reqs:
            self.stats.results[r.error or "ok"] += 1
            if r.error in DEAD_LETTER_CODES:
                self.stats.dead_lettered += 1
        for observe in self.observers:
            observe(reqs, infer_s, latency, queue)

    # -- failures ------------------------------------------------------------------------

    async def _on_redis_error(self, exc: BaseException, backoff: Backoff) -> None:
        self.stats.redis_errors += 1
        self._own_pending = True  # what we read may not have been answered
        delay = backoff.next_delay()
        logger.warning("Redis unavailable (%s: %s); retry %d in %.2f s",
                       type(exc).__name__, exc, backoff.attempt, delay)
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def _retrying(self, op: Callable[[], object], backoff: Backoff) -> None:
        while not self.stop.is_set():
            try:
                await op()  # type: ignore[misc]
                backoff.reset()
                return
            except TRANSIENT as exc:
                await self._on_redis_error(exc, backoff)


__all__ = ["Worker", "Stats", "Backoff", "RedisError"]
