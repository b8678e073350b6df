"""The consume loop, the hot path: read a batch with XREADGROUP, decode it, run
the model once, and answer (worker/answer.py: every result published and every
entry acknowledged in one atomic script call, one round trip)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, cast

from redis.exceptions import ResponseError

from worker.answer import Answerer, Outcome, Served
from worker.clock import RedisClock
from worker.connection import xreadgroup
from worker.eviction import check_eviction
from worker.heartbeat import peer_has_model
from worker.model import ServedModel
from worker.protocol import GONE, Decoded, Entries, as_text, decode_batch
from worker.publish import refusal
from worker.recovery import Recovery, poison_requests, split_poison
from worker.retry import TRANSIENT, Backoff, pause, retrying
from worker.shadow import Shadow, ShadowWork
from worker.shards import Streams
from worker.state import ServerState

logger = logging.getLogger(__name__)

PEER_CHECK_S = 1.0  # how often a worker without a model looks for a live worker with one
WRITE_PROBE_S = 0.5  # while Redis refuses writes: how often to try one (a tiny expiring key)
# Whether an entry id is in a stream, without reading its payload (which may be huge).
HAS_ENTRY_LUA = "return #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])"
# Redis's answers when the stream or its group is deleted under a reader: recreate and go on.
GROUP_GONE = ("NOGROUP", "UNBLOCKED")


class Worker:
    """One consumer in the group. ``run()`` returns when stopped or, in bounded
    mode, after ``max_messages`` entries or (``burst``) when the stream is drained."""

    def __init__(
        self,
        state: ServerState,
        streams: Streams | None = None,
        max_messages: int | None = None,
        burst: bool = False,
    ) -> None:
        self.state = state
        self.s = state.settings
        self.streams = streams or state.streams
        self.limits = state.limits(self.streams)
        self.stop = state.stop
        self.max_messages = max_messages
        self.burst = burst
        self.answerer = Answerer(state, self.streams)
        self.recovery = Recovery(state, self.streams)
        # After a start or a lost connection, first re-read our own pending
        # entries (XREADGROUP from id 0): they were read but maybe never answered.
        self._history_from: str | bytes | None = "0"
        self._history_why = "before this worker started"  # said when that history is answered
        self._ahead: Entries = []  # read together with the previous batch's publish
        self._next_claim = 0.0
        self._spin_until = 0.0  # busy-wait for the next read until then (IDLE_SPIN_MS)
        self._backoff = Backoff()
        self._peer_checked = -PEER_CHECK_S
        self._peer_has_model = False
        self._last_seen: bytes | None = None  # the newest entry id this worker read
        self._forgive = False  # the next history read follows refused writes: no poison count
        self._quiet_history = False  # a history read not worth an INFO line
        self._reconnected = False  # Redis was lost: check its memory policy again
        self.clock = RedisClock()  # ages are measured on Redis's clock
        self._has_entry = state.redis.register_script(HAS_ENTRY_LUA)

    # -- set-up --------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the group if it is missing: from the start of the stream the first time;
        after the group vanished under a running worker (XGROUP DESTROY), from the last
        entry this worker read if the stream still holds it, so what was answered is not
        answered again (the group hands entries out in order: none before it was left
        unread). A stream that no longer holds it was deleted (or trimmed past it) and is
        read from its start: never from an id it does not have, which may lie in the future
        and would hide every later state. Redis refusing writes (full, read-only) is waited
        out, said once."""
        start, why = "0", ""
        if self._last_seen is not None:
            kept = await self._has_entry(keys=[self.streams.states], args=[self._last_seen])
            if kept:
                start = as_text(self._last_seen)
            else:
                why = f" (the last entry this worker read, {as_text(self._last_seen)}, is not in it any more)"
        try:
            await self.state.redis.xgroup_create(self.streams.states, self.s.group, id=start, mkstream=True)
            logger.info("created group %s on %s from id %s%s", self.s.group, self.streams.states, start, why)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return
            refused = refusal(exc)
            if refused is None:
                raise
            self.state.writes_refused(refused, 0, self.streams.shard)
            while self.state.refused(self.streams.shard) and not self.stop.is_set():
                await self._await_writes()
            if not self.stop.is_set():
                await self.ensure_group()

    async def _await_writes(self) -> None:
        """While Redis refuses writes: try one every WRITE_PROBE_S (an XADD that keeps no
        entry, to a key of this shard that expires); when it takes it, read the states left
        pending again (their deliveries were not failures, so not counted toward poison)."""
        probe = f"{self.streams.states}:probe:{self.s.consumer}"
        pipe = self.state.redis.pipeline(transaction=False)
        pipe.xadd(probe, {"probe": "1"}, maxlen=0, approximate=False)
        pipe.expire(probe, 60)
        written, _ = await pipe.execute(raise_on_error=False)
        if isinstance(written, Exception) and refusal(written) is not None:
            await pause(self.stop, WRITE_PROBE_S)
            return
        if isinstance(written, Exception):
            raise written
        first = self.state.writes_probed(self.streams.shard)
        self._history_from, self._history_why = "0", "while Redis refused writes"
        self._quiet_history = not first  # said once an episode, however often it flaps
        self._forgive = True

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        await retrying(
            self.ensure_group,
            self.stop,
            "creating the consumer group",
            backoff=self._backoff,
            on_error=self._lost,
        )
        while not self.stop.is_set():
            more = await retrying(
                self._turn, self.stop, "reading states", backoff=self._backoff, on_error=self._lost
            )
            if more is False:
                break
        if self._ahead:  # read with the last publish: answer them rather than leave them for reclaim
            entries, self._ahead = self._ahead, []
            try:
                await self.handle(entries)
            except TRANSIENT as exc:
                logger.warning("%d entries read ahead stay pending for reclaim: %s", len(entries), exc)

    async def _turn(self) -> bool:
        """Reclaim when due, read a batch (or take the one read ahead), answer it.
        False when a bounded run is done."""
        if self.max_messages is not None and self.state.stats.processed >= self.max_messages:
            return False
        if self._reconnected:  # Redis was away: its memory policy (or the server) may have changed
            await self.clock.sync(self.state.redis, self.streams.states)
            await check_eviction(self.state)
            self._reconnected = False
        if self.state.refused(self.streams.shard):
            await self._await_writes()  # no new states meanwhile: their answers could not be written
            return True
        history = self._history_from is not None
        try:
            # Without a model, beside a live worker that has one: leave it everything,
            # new states and entries to reclaim alike.
            if not self._ahead and await self._defer_to_peers():
                return True
            if time.monotonic() >= self._next_claim:
                await self.clock.sync(self.state.redis, self.streams.states)
                await self._reclaim()
                self._next_claim = time.monotonic() + self.s.claim_interval_s
            entries, self._ahead = self._ahead or await self._read(self._room()), []
            if entries:
                if self.s.idle_spin_ms:
                    self._spin_until = time.monotonic() + self.s.idle_spin_ms / 1000.0
                counts = (
                    await self.recovery.delivery_counts(entries) if history and not self._forgive else None
                )
                # Under load (a batch at least half full), read the next batch in the
                # same round trip as this one's publish. Not when idle-ish: there the
                # extra read only competes for the CPU with the result's reader
                # (p50 at 1000/s went 0.83 → 1.1 ms); nor for history, nor when stopping.
                # (Not on a cluster either: a cluster pipeline cannot carry the script call.)
                busy = 2 * len(entries) >= self.s.read_count and not self.s.redis_cluster
                more = self._room(len(entries)) if busy and not history and not self.stop.is_set() else 0
                self._ahead = await self.handle(entries, counts, read_more=more)
                self._saw(self._ahead)
            if self._history_from is None:
                self._forgive = False
        except ResponseError as exc:
            why = refusal(exc)  # a read-only replica refuses XREADGROUP too (it writes the PEL)
            if why is not None:
                self.state.writes_refused(why, 0, self.streams.shard)
                return True
            if not str(exc).startswith(GROUP_GONE):
                raise
            logger.warning("the states stream or its consumer group vanished (%s); recreating it", exc)
            self._history_from, self._history_why = "0", "before its group was recreated"
            await retrying(self.ensure_group, self.stop, "creating the consumer group", backoff=self._backoff)
            return True
        self.state.redis_up = True
        return bool(entries) or not self.burst or history

    def _saw(self, entries: Entries) -> None:
        if entries and (self._last_seen is None or _newer(entries[-1][0], self._last_seen)):
            self._last_seen = entries[-1][0]

    def _lost(self, exc: BaseException) -> None:
        self.state.redis_failed(exc)
        self._reconnected = True
        # What we read may not have been answered: re-read our pending entries.
        self._history_from, self._history_why = "0", "before a lost connection"

    def _room(self, in_hand: int = 0) -> int:
        """How many entries the next read may take (``max_messages`` bounds it)."""
        if self.max_messages is None:
            return self.s.read_count
        return max(0, min(self.s.read_count, self.max_messages - self.state.stats.processed - in_hand))

    async def _defer_to_peers(self) -> bool:
        """True (after a short pause) while this worker has no model and another live
        worker has one: the states are left to it rather than answered model_unavailable.
        Alone, or in burst mode, a worker without a model answers them all the same."""
        if self.state.models.any_loaded or self.burst:
            return False
        now = time.monotonic()
        if now - self._peer_checked >= PEER_CHECK_S:
            self._peer_checked = now
            has = await peer_has_model(self.state)
            if has != self._peer_has_model:
                logger.info(
                    "another live worker has a model: leaving the states to it until one loads here"
                    if has
                    else "no other live worker has a model: answering states model_unavailable"
                )
            self._peer_has_model = has
        if self._peer_has_model:
            await pause(self.stop, self.s.block_ms / 1000.0)
        return self._peer_has_model

    async def _read(self, count: int) -> Entries:
        """New entries (``>``), or first our own pending ones from before a restart or outage."""
        start = self._history_from or ">"
        # No BLOCK for our own history, nor in burst mode; else a short one (below the socket timeout).
        block = None if (self._history_from is not None or self.burst) else self.s.block_ms
        read = xreadgroup(
            self.state.redis, self.s.group, self.s.consumer, self.streams.states, start, count, block
        )
        resp = await self._waiting(read, block)
        entries: Entries = resp[0][1] if resp else []
        self._saw(entries)
        if self._history_from is not None:
            # Step past what we got, so an entry left pending is not re-read in a loop
            # (the reclaim pass takes care of it); deleted payloads come back as None.
            self._history_from = entries[-1][0] if entries else None
            entries = [(eid, f if f is not None else GONE) for eid, f in entries]
            if entries:  # rare (a restart, a lost connection), and worth an operator's line
                logger.log(
                    logging.DEBUG if self._quiet_history else logging.INFO,
                    "answering %d %s read by %s and not acknowledged (%s), from %s",
                    len(entries),
                    "entry" if len(entries) == 1 else "entries",
                    self.s.consumer,
                    self._history_why,
                    as_text(entries[0][0]),
                )
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
            self.state.stats.spun += 1
        return await task

    async def _reclaim(self) -> None:
        async for entries in self.recovery.claim():
            await self.handle(entries, await self.recovery.delivery_counts(entries))
        await self.recovery.forget_departed()
        if self.s.trim_states:
            try:
                await self.recovery.trim_answered()
            except (ResponseError, ValueError) as exc:  # housekeeping: the next pass tries again
                gone = "no such key" in str(exc)  # the stream vanished: the next read recreates it
                logger.log(
                    logging.DEBUG if gone else logging.WARNING, "the states stream was not trimmed: %s", exc
                )
        self.state.stats.reclaim_passes += 1

    async def handle(
        self, entries: Entries, counts: dict[bytes, int] | None = None, read_more: int = 0
    ) -> Entries:
        """Answer entries: poison ones (delivered too often) as ``internal``, the rest
        normally; a batch that fails is retried entry by entry so one bad entry
        cannot hold the others back. What still fails stays pending for reclaim.
        Returns the next batch when ``read_more`` asked for it."""
        if counts:
            poison, entries = split_poison(entries, counts, self.s.max_deliveries)
            if poison:
                now_ms = self.clock.now_ms()
                reqs = poison_requests(poison, counts, self.s.max_deliveries, now_ms, self.limits)
                await self.answerer.answer(
                    Outcome(poison, reqs, now_ms, time.perf_counter(), deliveries=counts)
                )
        if not entries:
            return []
        try:
            return await self.process(entries, read_more)
        except TRANSIENT:
            raise
        except Exception:
            logger.exception("a batch of %d failed; answering its entries one by one", len(entries))
            # A read made with the publish may have happened: re-read our pending entries.
            if self._history_from is None:
                self._history_from, self._history_why = "0", "left pending when a batch failed"
        if len(entries) == 1:
            self.state.stats.failed += 1
            return []
        for entry in entries:
            try:
                await self.process([entry])
            except TRANSIENT:
                raise
            except Exception:
                self.state.stats.failed += 1
                logger.exception("entry %s failed; left pending for redelivery", entry[0].decode())
        return []

    async def process(self, entries: Entries, read_more: int = 0) -> Entries:
        """Decode → infer → answer one read; with ``read_more``, read up to that many
        new entries in the answer's round trip and return them."""
        t_read = time.perf_counter()
        now_ms = self.clock.now_ms()
        models = self.state.models
        dec = decode_batch(entries, now_ms, self.limits, models.route)
        out = Outcome(entries, dec.reqs, now_ms, t_read)
        infer(out, dec, models.any_loaded)
        ahead = await self.answerer.answer(out, read_more)
        if self.state.shadow is not None and models.has_challengers:  # after the answers, never before
            try:
                self._offer_shadow(self.state.shadow, out)
            except Exception:
                logger.exception("offering a batch to the challenger failed")
        return ahead

    def _offer_shadow(self, shadow: Shadow, out: Outcome) -> None:
        for served in out.served:
            pairs = [out.reqs[i].pair for i in served.where]
            if any(shadow.challenger_for(p) is not None for p in set(pairs)):
                ids = [out.reqs[i].entry_id for i in served.where]
                shadow.offer(ShadowWork(pairs, ids, served.rows, served.actions, served.model))


def _newer(a: bytes, b: bytes) -> bool:
    """Whether stream id ``a`` comes after ``b``."""
    ams, _, aseq = a.partition(b"-")
    bms, _, bseq = b.partition(b"-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))


def infer(out: Outcome, dec: Decoded, any_model: bool = False) -> None:
    """Run each model over its group's rows in one forward pass and record the
    actions; a valid entry no model takes, or whose pass fails, gets an error."""
    for i in dec.unrouted:
        pair = out.reqs[i].pair
        if any_model:  # other pairs have models: say which pair has none
            detail = f"no model serves pair {pair!r} and there is no default model"
        else:
            detail = "no model is loaded; the worker is waiting for a checkpoint"
        out.reqs[i].fail("model_unavailable", detail)
    t0 = time.perf_counter()
    for group in dec.groups:
        model = cast(ServedModel, group.target)
        try:
            # tolist() of the float32 output: the same values, as Python floats
            out.served.append(Served(model, group.where, model.infer(group.rows).tolist(), group.rows))
        except Exception as exc:
            logger.exception("inference failed for a batch of %d", len(group.where))
            for i in group.where:
                out.reqs[i].fail("internal", f"inference failed: {type(exc).__name__}")
    out.infer_s = time.perf_counter() - t0
