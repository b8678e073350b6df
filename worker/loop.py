"""The consume loop, the hot path: read a batch with XREADGROUP, decode it,
infer once, encode, then publish every result and acknowledge every entry in
one atomic script call (worker/publish.py), one round trip."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.backoff import Backoff, pause
from worker.model import ModelManager
from worker.protocol import (
    GONE,
    Limits,
    Request,
    batch_tail,
    dead_letter_fields,
    decode_batch,
    entry_time_ms,
    error_fields,
    ok_values,
)
from worker.publish import PUBLISH_LUA, Batch
from worker.recovery import Recovery
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
    failed: int = 0  # entry processings that raised (left pending for redelivery)
    redis_errors: int = 0
    spun: int = 0  # reads answered while busy-waiting (IDLE_SPIN_MS) instead of sleeping
    started_at: float = field(default_factory=time.time)

    @property
    def processed(self) -> int:
        return sum(self.results.values())


Entries = list[tuple[bytes, dict[bytes, bytes]]]
# (entries by outcome: "ok" or an error code, infer seconds, batch latency seconds, queue_ms per entry)
BatchObserver = Callable[[Counter[str], float, float, list[float]], None]


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
        # entries (XREADGROUP from id 0): they were read but maybe never answered.
        self._history_from: str | bytes | None = "0"
        self.redis_up = False
        self.recovery = Recovery(self)
        self.publish_script = redis.register_script(PUBLISH_LUA)
        self._spin_until = 0.0  # busy-wait for the next read until then (IDLE_SPIN_MS)

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
        next_claim = 0.0
        ahead: Entries = []  # read together with the previous batch's publish
        while ahead or not self.stop.is_set():
            if self.max_messages is not None and self.stats.processed >= self.max_messages:
                break
            history = self._history_from is not None
            try:
                if time.monotonic() >= next_claim:
                    await self.recovery.reclaim()
                    next_claim = time.monotonic() + self.s.claim_interval_s
                entries, ahead = ahead or await self._read(self._room()), []
                if entries:
                    if self.s.idle_spin_ms:
                        self._spin_until = time.monotonic() + self.s.idle_spin_ms / 1000.0
                    counts = await self.recovery.delivery_counts(entries) if history else None
                    # Under load (a batch at least half full), read the next batch in the
                    # same round trip as this one's publish. Not when idle-ish: there the
                    # extra read only competes for the CPU with the result's reader
                    # (p50 at 1000/s went 0.83 → 1.1 ms); nor for history, nor when stopping.
                    busy = 2 * len(entries) >= self.s.read_count
                    more = self._room(len(entries)) if busy and not history and not self.stop.is_set() else 0
                    ahead = await self.handle(entries, counts, read_more=more)
                self._redis_ok(backoff)
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

    def _room(self, in_hand: int = 0) -> int:
        """How many entries the next read may take (``max_messages`` bounds it)."""
        if self.max_messages is None:
            return self.s.read_count
        return max(0, min(self.s.read_count, self.max_messages - self.stats.processed - in_hand))

    async def _read(self, count: int) -> Entries:
        """New entries (``>``), or first our own pending ones from before a restart or outage."""
        start = self._history_from or ">"
        # No BLOCK for our own history, nor in burst mode; else a short one (below the socket timeout).
        block = None if (self._history_from is not None or self.burst) else self.s.block_ms
        resp = await self._waiting(
            self.redis.xreadgroup(
                self.s.group, self.s.consumer, {self.s.states_stream: start}, count=count, block=block
            ),
            block,
        )
        entries = resp[0][1] if resp else []
        if self._history_from is not None:
            # Step past what we got, so an entry left pending is not re-read in a loop
            # (the reclaim pass takes care of it); deleted payloads come back as None.
            self._history_from = entries[-1][0] if entries else None
            entries = [(eid, f if f is not None else GONE) for eid, f in entries]
        return entries

    async def _waiting(self, read: Awaitable[Any], block: int | None) -> Any:
        """Await a read; a blocking one inside the spin window (IDLE_SPIN_MS) keeps
        this process on the CPU until the window ends: each ``sleep(0)`` lets the
        event loop poll its sockets without sleeping. On our VM a process that
        sleeps pays ~0.1 ms to be woken and runs its first work cold (a batch-1
        inference: 18 µs hot, 54-113 µs after a 1 ms sleep)."""
        if block is None or time.monotonic() >= self._spin_until:
            return await read
        task = asyncio.ensure_future(read)
        while not task.done() and time.monotonic() < self._spin_until:
            await asyncio.sleep(0)
        if task.done():
            self.stats.spun += 1
        return await task

    async def handle(
        self, entries: Entries, counts: dict[bytes, int] | None = None, read_more: int = 0
    ) -> Entries:
        """Answer entries: poison ones (delivered too often) as ``internal``, the rest
        normally; a batch that fails is retried entry by entry so one bad entry
        cannot hold the others back. What still fails stays pending for reclaim.
        Returns the next batch when ``read_more`` asked ``process`` to read it."""
        if counts:
            poison = [e for e in entries if counts.get(e[0], 0) >= self.s.max_deliveries]
            if poison:
                await self.recovery.answer_poison(poison, counts)
                entries = [e for e in entries if counts.get(e[0], 0) < self.s.max_deliveries]
        if not entries:
            return []
        try:
            return await self.process(entries, read_more)
        except TRANSIENT:
            raise
        except Exception:
            logger.exception("a batch of %d failed; answering its entries one by one", len(entries))
            # A read made with the publish may have happened: re-read our pending entries.
            self._history_from = self._history_from or "0"
        if len(entries) == 1:
            self.stats.failed += 1
            return []
        for entry in entries:
            try:
                await self.process([entry])
            except TRANSIENT:
                raise
            except Exception:
                self.stats.failed += 1
                logger.exception("entry %s failed; left pending for redelivery", entry[0].decode())
        return []

    async def process(self, entries: Entries, read_more: int = 0) -> Entries:
        """Answer and acknowledge every entry of one read in one atomic script call;
        with ``read_more``, read up to that many new entries in the same round trip."""
        s = self.s
        t_read = time.perf_counter()
        now_ms = time.time() * 1000.0
        model = self.models.current  # one model for the whole batch
        dec = decode_batch(entries, model.state_dim if model is not None else None, now_ms, self.limits)
        reqs, valid = dec.reqs, dec.valid
        actions: list[float] = []
        infer_s = 0.0
        if valid and model is None:
            for i in valid:
                reqs[i].fail(
                    "model_unavailable", "no model is loaded; the worker is waiting for a checkpoint"
                )
            valid = []
        elif valid:
            t0 = time.perf_counter()
            try:
                # tolist() of the float32 output: the same values, as Python floats
                actions = model.infer(dec.rows).tolist()  # type: ignore[union-attr, arg-type]
            except Exception as exc:
                logger.exception("inference failed for a batch of %d", len(valid))
                for i in valid:
                    reqs[i].fail("internal", f"inference failed: {type(exc).__name__}")
                valid = []
            infer_s = time.perf_counter() - t0
        queue = [max(0.0, now_ms - entry_time_ms(r.entry_id)) for r in reqs]
        batch = Batch(s.states_stream, s.group, s.results_maxlen)
        # Tails are registered after the entries are encoded (so latency_ms covers the
        # encoding too); their indexes are fixed now: ok results 1, errors the next.
        batch.ok_tail = 1 if valid else 0
        err_tail = batch.ok_tail + 1 if len(valid) < len(reqs) else 0
        band = s.dead_band
        for i, a in zip(valid, actions, strict=True):
            r = reqs[i]
            batch.ok(r.reply_to, r.id, r.entry_id, r.pair, *ok_values(a, band, queue[i]))
        others: list[tuple[int, Request, float]] = []  # (op, entry, its queue_ms) of the errors
        if err_tail:
            for r, (_, received), q in zip(reqs, entries, queue, strict=True):
                if r.error is None:
                    continue
                if r.error in DEAD_LETTER_CODES:
                    self.dead_letter(batch, r.entry_id, received, r.error, r.detail)
                others.append((batch.xadd(r.reply_to, error_fields(r, q), s.results_maxlen, err_tail), r, q))
        latency = time.perf_counter() - t_read
        if valid:
            batch.tail(batch_tail(s.consumer, infer_s, latency, len(reqs), model.fields))  # type: ignore[union-attr]
        if err_tail:
            batch.tail(batch_tail(s.consumer, infer_s, latency, len(reqs)))
        ids = [r.entry_id for _, r, _ in others]  # the ok results' entries are acknowledged with them
        ahead: Entries = []
        if read_more:
            pipe = self.redis.pipeline(transaction=False)
            batch.queue(pipe, self.publish_script, ids)
            pipe.xreadgroup(s.group, s.consumer, {s.states_stream: ">"}, count=read_more)
            published, resp = await pipe.execute(raise_on_error=False)
            if isinstance(resp, Exception):  # the next plain read will meet it again
                logger.warning("read-ahead failed: %s", resp)
            else:
                ahead = resp[0][1] if resp else []
            if isinstance(published, NoScriptError):  # Redis restarted or SCRIPT FLUSH
                _, failed = await batch.run(self.redis, self.publish_script, ids)
            elif isinstance(published, Exception):
                self._history_from = self._history_from or "0"  # re-read what came with it
                raise published
            else:
                failed = [int(x) for x in published[1]]
        else:
            _, failed = await batch.run(self.redis, self.publish_script, ids)
        if failed:
            sent = [(j, reqs[i], queue[i]) for j, i in enumerate(valid)] + others
            await self._answer_elsewhere(failed, sent)
        self.stats.batches += 1
        outcome = Counter(r.error for _, r, _ in others)
        if valid:
            outcome["ok"] = len(valid)
        self.stats.results.update(outcome)
        self.stats.dead_lettered += sum(n for code, n in outcome.items() if code in DEAD_LETTER_CODES)
        for observe in self.observers:
            observe(outcome, infer_s, latency, queue)
        return ahead

    def dead_letter(
        self,
        batch: Batch,
        entry_id: str,
        fields: dict[bytes, bytes],
        error: str,
        detail: str,
        deliveries: int | None = None,
    ) -> None:
        batch.xadd(
            self.s.dead_stream,
            dead_letter_fields(
                entry_id, fields, self.s.states_stream, self.s.consumer, error, detail, deliveries
            ),
            self.s.dead_maxlen,
        )

    async def _answer_elsewhere(self, failed: list[int], sent: list[tuple[int, Request, float]]) -> None:
        """An XADD to a ``reply_to`` that is not a stream (WRONGTYPE) fails alone; the
        entry is acknowledged all the same, so its answer goes to the default stream."""
        bad = set(failed)
        batch = Batch(self.s.states_stream, self.s.group, self.s.results_maxlen)
        tail = batch.tail(batch_tail(self.s.consumer, 0.0, 0.0, 1))
        for index, r, queue_ms in sent:
            if index not in bad:
                continue
            logger.warning(
                "result for %s could not go to %r; sent to %s instead",
                r.entry_id,
                r.reply_to,
                self.s.results_stream,
            )
            moved = Request(r.entry_id, r.id, self.s.results_stream, r.pair).fail(
                "internal", f"the result could not be written to {r.reply_to!r} (is that key a stream?)"
            )
            batch.xadd(self.s.results_stream, error_fields(moved, queue_ms), self.s.results_maxlen, tail)
        await batch.run(self.redis, self.publish_script, [])

    # -- failures ------------------------------------------------------------------------

    def _redis_ok(self, backoff: Backoff) -> None:
        if backoff.attempt:
            logger.warning("Redis reachable again after %d failed attempt(s)", backoff.attempt)
        backoff.reset()
        self.redis_up = True

    async def _on_redis_error(self, exc: BaseException, backoff: Backoff) -> None:
        self.stats.redis_errors += 1
        self.redis_up = False
        self._history_from = "0"  # what we read may not have been answered: re-read our pending
        delay = backoff.next_delay()
        logger.warning(
            "Redis unavailable (%s: %s); retry %d in %.2f s", type(exc).__name__, exc, backoff.attempt, delay
        )
        await pause(self.stop, delay)

    async def _retrying(self, op: Callable[[], Awaitable[object]], backoff: Backoff) -> None:
        while not self.stop.is_set():
            try:
                await op()
                self._redis_ok(backoff)
                return
            except TRANSIENT as exc:
                await self._on_redis_error(exc, backoff)
