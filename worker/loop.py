"""The consume loop, the hot path: read a batch from the loop's streams (the shared
states stream and each strategy's, one read, a fair COUNT each), decode it, run each
model once, and answer (worker/answer.py: every result published and its entry
acknowledged in one atomic script call, one round trip). Reads go through
worker/reads.py, which never hands the worker a payload larger than the limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from worker.answer import Answerer, Outcome, Served
from worker.catalog import Catalog
from worker.clock import RedisClock
from worker.eviction import check_eviction
from worker.heartbeat import peer_has_model
from worker.model import ServedModel
from worker.protocol import Decoded, as_text, decode_batch
from worker.publish import refusal
from worker.reads import READ_LUA, Read, parse, per_stream, read_args
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
MAX_ID = "18446744073709551615-18446744073709551615"  # a history read from here finds nothing


class ConsumeLoop:
    """One shard's consume loop: one consumer of the group on the shard's streams.
    ``run()`` returns when stopped or, in bounded mode, after ``max_messages`` entries
    or (``burst``) when the streams are drained."""

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
        self.keys = [src.states for src in self.streams.sources]
        self.limits = state.limits(self.streams)
        self.stop = state.stop
        self.max_messages = max_messages
        self.burst = burst
        self.answerer = Answerer(state, self.streams)
        self.recovery = Recovery(state, self.streams)
        self.reader = state.redis.register_script(READ_LUA)
        # After a start or a lost connection, first re-read our own pending entries
        # (from id 0 in each stream): they were read but maybe never answered.
        self._history: dict[int, bytes | str] | None = self._from_start()
        self._history_why = "before this worker started"  # said when that history is answered
        self._ahead = Read()  # read together with the previous batch's publish
        self._deferred: dict[int, list[bytes]] = {}  # delivered to us, not read yet (over budget)
        self._by_id = False  # the last read took deferred entries by id
        self._next_claim = 0.0
        self._spin_until = 0.0  # busy-wait for the next read until then (IDLE_SPIN_MS)
        self._backoff = Backoff()
        self._peer_checked = -PEER_CHECK_S
        self._peer_has_model = False
        self._last_seen: dict[int, bytes] = {}  # the newest entry id read from each stream
        self._forgive = False  # the next history read follows refused writes: no poison count
        self._quiet_history = False  # a history read not worth an INFO line
        self._reconnected = False  # Redis was lost: check its memory policy again
        self.clock = RedisClock()  # ages are measured on Redis's clock
        self._has_entry = state.redis.register_script(HAS_ENTRY_LUA)

    def _from_start(self) -> dict[int, bytes | str]:
        return dict.fromkeys(range(len(self.keys)), "0")

    # -- set-up --------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """The group on every stream of the loop (see ``_ensure_group``)."""
        for source in range(len(self.keys)):
            await self._ensure_group(source)

    async def _ensure_group(self, source: int) -> None:
        """Create the group on a stream if it is missing: from the start of the stream the
        first time; after the group vanished under a running worker (XGROUP DESTROY), from
        the last entry this worker read if the stream still holds it, so what was answered
        is not answered again (the group hands entries out in order: none before it was
        left unread). A stream that no longer holds it was deleted (or trimmed past it)
        and is read from its start: never from an id it does not have, which may lie in
        the future and would hide every later state. Redis refusing writes (full,
        read-only) is waited out, said once."""
        key = self.keys[source]
        start, why = "0", ""
        last = self._last_seen.get(source)
        if last is not None:
            if await self._has_entry(keys=[key], args=[last]):
                start = as_text(last)
            else:
                why = f" (the last entry this worker read, {as_text(last)}, is not in it any more)"
        try:
            await self.state.redis.xgroup_create(key, self.s.group, id=start, mkstream=True)
            logger.info("created group %s on %s from id %s%s", self.s.group, key, start, why)
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
                await self._ensure_group(source)

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
        self._history, self._history_why = self._from_start(), "while Redis refused writes"
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
            read, self._ahead = self._ahead, Read()
            try:
                await self.handle(read)
            except TRANSIENT as exc:
                logger.warning("%d entries read ahead stay pending for reclaim: %s", len(read), exc)

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
        history = self._history is not None
        try:
            # Without a model, beside a live worker that has one: leave it everything,
            # new states and entries to reclaim alike.
            if not self._ahead and await self._defer_to_peers():
                return True
            if time.monotonic() >= self._next_claim:
                await self.clock.sync(self.state.redis, self.streams.states)
                await self._reclaim()
                self._next_claim = time.monotonic() + self.s.claim_interval_s
            read, self._ahead = self._ahead or await self._read(self._room()), Read()
            if read:
                if self.s.idle_spin_ms:
                    self._spin_until = time.monotonic() + self.s.idle_spin_ms / 1000.0
                # Delivery counts (poison) for what may have been delivered before: history, and
                # entries read by id after a claim; not after refused writes (not failures).
                counted = (history or self._by_id) and not self._forgive
                counts = await self.recovery.delivery_counts(read) if counted else None
                # Under load (a batch at least half full), read the next batch in the
                # same round trip as this one's publish. Not when idle-ish: there the
                # extra read only competes for the CPU with the result's reader
                # (p50 at 1000/s went 0.83 → 1.1 ms); nor for history, nor when stopping.
                # (Not on a cluster either: a cluster pipeline cannot carry the script call.)
                busy = 2 * len(read) >= self.s.read_count and not self.s.redis_cluster
                more = self._room(len(read)) if busy and not history and not self.stop.is_set() else 0
                self._ahead = await self.handle(read, counts, read_more=more)
                self._saw(self._ahead)
            if self._history is None:
                self._forgive = False
        except ResponseError as exc:
            refused = refusal(exc)  # a read-only replica refuses XREADGROUP too (it writes the PEL)
            if refused is not None:
                self.state.writes_refused(refused, 0, self.streams.shard)
                return True
            if not str(exc).startswith(GROUP_GONE):
                raise
            logger.warning("a states stream or its consumer group vanished (%s); recreating it", exc)
            self._history, self._history_why = self._from_start(), "before its group was recreated"
            await retrying(self.ensure_group, self.stop, "creating the consumer group", backoff=self._backoff)
            return True
        self.state.redis_up = True
        return bool(read) or not self.burst or history or bool(self._deferred)

    def _saw(self, read: Read) -> None:
        self._deferred_from(read)
        for source, entry_id in read.last().items():
            last = self._last_seen.get(source)
            if last is None or _newer(entry_id, last):
                self._last_seen[source] = entry_id

    def _deferred_from(self, read: Read) -> None:
        for source, ids in read.deferred.items():
            self._deferred.setdefault(source, []).extend(ids)
            last = self._last_seen.get(source)
            if last is None or _newer(ids[-1], last):
                self._last_seen[source] = ids[-1]

    def _lost(self, exc: BaseException) -> None:
        self.state.redis_failed(exc)
        self._reconnected = True
        # What we read may not have been answered: re-read our pending entries.
        self._history, self._history_why = self._from_start(), "before a lost connection"
        self._deferred = {}  # pending too: the history read takes them

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

    # -- reading ---------------------------------------------------------------------------

    async def _read(self, count: int) -> Read:
        """What to answer next: entries delivered but not read yet (over a read's budget),
        our own pending ones from before a restart or an outage, or new ones (``>``),
        waiting for them (BLOCK) when there are none."""
        if count <= 0:
            return Read()
        self._by_id = bool(self._deferred)
        if self._deferred:
            deferred, self._deferred = self._deferred, {}
            read = await self._by_ids(deferred)
            self._saw(read)
            return read
        if self._history is not None:
            return await self._read_history(count)
        if not self.state.replies_bounded:  # nothing bounds a plain read's reply: the script does
            read = await self._script_read(">", count)
            if read or read.deferred or self.burst:
                self._saw(read)
                return read
        # No BLOCK in burst mode; else a short one (below the socket timeout).
        block = None if self.burst else self.s.block_ms
        read = await self._waiting(self._plain_read(count, block), block)
        self._saw(read)
        return read

    def args(self, mode: str) -> list[Any]:
        return read_args(self.s.max_field_bytes, mode)

    async def _script_read(self, start: str, count: int, starts: list[bytes | str] | None = None) -> Read:
        ids = starts or [start] * len(self.keys)
        reply = await self.reader(
            keys=self.keys,
            args=[
                *self.args("group"),
                self.s.group,
                self.s.consumer,
                per_stream(count, len(self.keys)),
                *ids,
            ],
        )
        return parse(reply)

    async def _by_ids(self, ids: dict[int, list[bytes]]) -> Read:
        args: list[Any] = self.args("ids")
        for source in range(len(self.keys)):
            chosen = ids.get(source, [])
            args += [len(chosen), *chosen]
        return parse(await self.reader(keys=self.keys, args=args))

    async def _plain_read(self, count: int, block: int | None) -> Read:
        """New entries of every stream (a fair COUNT each), as XREADGROUP gives them: its
        reply is bounded by the connection (MAX_REPLY_BYTES: past it the read is refused and
        what it delivered is read again, bounded, as history)."""
        redis = self.state.redis
        each = per_stream(count, len(self.keys))
        streams: dict[Any, Any] = dict.fromkeys(self.keys, ">")
        if isinstance(redis, RedisCluster):
            args: list[Any] = ["XREADGROUP", "GROUP", self.s.group, self.s.consumer, "COUNT", each]
            if block is not None:
                args += ["BLOCK", block]
            args += ["STREAMS", *self.keys, *streams.values()]
            resp = await redis.execute_command(*args, target_nodes=redis.get_node_from_key(self.keys[0]))
        else:
            resp = await redis.xreadgroup(self.s.group, self.s.consumer, streams, count=each, block=block)
        return self.plain(resp)

    def plain(self, resp: Any) -> Read:
        """XREADGROUP's reply (per stream: its name and entries) as a Read."""
        read = Read()
        if not resp:
            return read
        if len(resp) == 1 and len(self.keys) == 1:  # the usual case, one stream: no lookups
            read.entries = resp[0][1]
            read.sources = [0] * len(read.entries)
            return read
        index = {key: n for n, key in enumerate(self.keys)}
        for stream, entries in resp:
            source = index[as_text(stream)]
            read.entries += entries
            read.sources += [source] * len(entries)
        return read

    async def _read_history(self, count: int) -> Read:
        """Our own pending entries, from where the last history read stopped in each
        stream; the history is over when no stream has more."""
        assert self._history is not None
        starts = [self._history.get(n, MAX_ID) for n in range(len(self.keys))]
        read = await self._script_read("0", count, starts)
        # Step past what we got, so an entry left pending is not re-read in a loop (the
        # reclaim pass takes care of it); a stream that gave nothing has no more history.
        last = read.last()
        for source, ids in read.deferred.items():
            last[source] = ids[-1]
        self._history = {source: last[source] for source in self._history if source in last} or None
        self._saw(read)
        if read:  # rare (a restart, a lost connection), and worth an operator's line
            logger.log(
                logging.DEBUG if self._quiet_history else logging.INFO,
                "answering %d %s read by %s and not acknowledged (%s), from %s",
                len(read),
                "entry" if len(read) == 1 else "entries",
                self.s.consumer,
                self._history_why,
                as_text(read.entries[0][0]),
            )
        return read

    async def _waiting(self, read: Awaitable[Read], block: int | None) -> Read:
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
        async for read, counts in self.recovery.claim():
            self._deferred_from(read)  # claimed but not read (over the budget): read by id next
            await self.handle(read, counts)
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

    # -- answering -------------------------------------------------------------------------

    async def handle(self, read: Read, counts: dict[bytes, int] | None = None, read_more: int = 0) -> Read:
        """Answer entries: poison ones (delivered too often) as ``internal``, the rest
        normally; a batch that fails is retried entry by entry so one bad entry
        cannot hold the others back. What still fails stays pending for reclaim.
        Returns the next batch when ``read_more`` asked for it."""
        if counts:
            poison, read = split_poison(read, counts, self.s.max_deliveries)
            if poison:
                now_ms = self.clock.now_ms()
                reqs = poison_requests(poison, counts, self.s.max_deliveries, now_ms, self.limits)
                await self.answerer.answer(
                    Outcome(poison.entries, reqs, now_ms, time.perf_counter(), deliveries=counts)
                )
        if not read:
            return Read()
        try:
            return await self.process(read, read_more)
        except TRANSIENT:
            raise
        except Exception:
            logger.exception("a batch of %d failed; answering its entries one by one", len(read))
            # A read made with the publish may have happened: re-read our pending entries.
            if self._history is None:
                self._history, self._history_why = self._from_start(), "left pending when a batch failed"
        if len(read) == 1:
            self.state.stats.failed += 1
            return Read()
        for i, (entry_id, _) in enumerate(read.entries):
            try:
                await self.process(read.take([i]))
            except TRANSIENT:
                raise
            except Exception:
                self.state.stats.failed += 1
                logger.exception("entry %s failed; left pending for redelivery", entry_id.decode())
        return Read()

    async def process(self, read: Read, read_more: int = 0) -> Read:
        """Decode → infer → answer one read; with ``read_more``, read up to that many
        new entries in the answer's round trip and return them."""
        t_read = time.perf_counter()
        now_ms = self.clock.now_ms()
        models = self.state.models
        dec = decode_batch(read.entries, now_ms, self.limits, models.route, read.sources)
        out = Outcome(read.entries, dec.reqs, now_ms, t_read)
        infer(out, dec, models)
        ahead = await self.answerer.answer(out, read_more, (self._read_ahead, self._parse_ahead))
        if self.state.shadow is not None and models.has_challengers:  # after the answers, never before
            try:
                self._offer_shadow(self.state.shadow, out)
            except Exception:
                logger.exception("offering a batch to the challenger failed")
        return ahead

    def _read_ahead(self, pipe: Any, count: int) -> None:
        """Queue, in the publish's pipeline, a read of up to ``count`` new entries (bounded
        as a plain read is; without that bound, through the reading script)."""
        each = per_stream(count, len(self.keys))
        if self.state.replies_bounded:
            pipe.xreadgroup(self.s.group, self.s.consumer, dict.fromkeys(self.keys, ">"), count=each)
        else:
            args = [*self.args("group"), self.s.group, self.s.consumer, each]
            pipe.evalsha(self.reader.sha, len(self.keys), *self.keys, *args, *[">"] * len(self.keys))

    def _parse_ahead(self, resp: Any) -> Read:
        return self.plain(resp) if self.state.replies_bounded else parse(resp)

    def _offer_shadow(self, shadow: Shadow, out: Outcome) -> None:
        for served in out.served:
            pairs = [out.reqs[i].pair for i in served.where]
            if any(shadow.challenger_for(p) is not None for p in set(pairs)):
                ids = [out.reqs[i].entry_id for i in served.where]
                shadow.offer(ShadowWork(pairs, ids, served.rows, served.actions, served.model))


# The name the code used before the consume loop was named for what it is.
Worker = ConsumeLoop


def _newer(a: bytes, b: bytes) -> bool:
    """Whether stream id ``a`` comes after ``b``."""
    ams, _, aseq = a.partition(b"-")
    bms, _, bseq = b.partition(b"-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))


def infer(out: Outcome, dec: Decoded, models: Catalog | None = None) -> None:
    """Run each model over its group's rows in one forward pass and record the
    actions; a valid entry no model takes, or whose pass fails, gets an error:
    ``no_model_for_pair`` when models are loaded and none was trained for its pair,
    ``model_unavailable`` when none is loaded yet."""
    for i in dec.unrouted:
        pair = out.reqs[i].pair
        if models is not None and models.any_loaded:  # say which pairs it serves, and the one meant
            out.reqs[i].fail("no_model_for_pair", models.unserved(pair))
        else:
            out.reqs[i].fail(
                "model_unavailable", "no model is loaded; the worker is waiting for a checkpoint"
            )
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
