"""The one place that answers: a decoded (and inferred) batch becomes its result
entries, dead letters and acknowledgements, published in one atomic server-side
script call (worker/publish.py), one round trip. An entry is acknowledged only in the
call that wrote its answer. It routes elsewhere a result whose ``reply_to`` cannot be
written, leaves pending what Redis refused to write (and says so: the consume loop
then waits for writes to come back), and it alone counts outcomes and notifies
observers (metrics), for the consume loop and for recovery alike."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import NoScriptError

from worker.model import ServedModel
from worker.protocol import (
    Entries,
    Request,
    batch_tail,
    dead_letter_fields,
    entry_time_ms,
    error_fields,
    ok_values,
)
from worker.publish import PUBLISH_LUA, Batch, failures, refused
from worker.reads import Read
from worker.shards import Streams
from worker.state import ServerState

logger = logging.getLogger(__name__)

# (entries by outcome: "ok" or an error code, infer seconds, batch latency seconds, queue_ms per entry)
BatchObserver = Callable[[Counter[str], float, float, list[float]], None]
# The consume loop's read made in the publish's round trip: one queues it in the pipeline
# (up to n new entries), the other turns its reply into a Read.
ReadAhead = tuple[Callable[[Any, int], None], Callable[[Any], "Read"]]

DEAD_LETTER_CODES = frozenset({"invalid_state", "too_large", "internal"})


@dataclass
class Served:
    """Entries one model answered: their indexes and its action for each."""

    model: ServedModel
    where: list[int]
    actions: list[float]
    rows: np.ndarray  # the states it ran on (a challenger may see them after the answer)


@dataclass
class Outcome:
    """One batch ready to answer: each entry's request (an error, or valid) and,
    for the valid ones, the actions of the model that ran them (a group per model)."""

    entries: Entries  # as read: ids and raw fields (dead letters copy the fields)
    reqs: list[Request]
    now_ms: float  # wall clock when the batch was read
    t_read: float  # perf_counter when the batch was read
    served: list[Served] = field(default_factory=list)
    infer_s: float = 0.0  # every forward pass of the batch
    deliveries: dict[bytes, int] | None = None  # delivery counts, copied into dead letters

    @property
    def answered(self) -> int:
        return sum(len(g.where) for g in self.served)


class Answerer:
    """Publishes outcomes for one set of streams (see ``Streams``)."""

    def __init__(self, state: ServerState, streams: Streams | None = None) -> None:
        self.state = state
        self.s = state.settings
        self.streams = streams or state.streams
        self.script = state.redis.register_script(PUBLISH_LUA)
        self.observers: list[BatchObserver] = []
        self._defaults = {src.results for src in self.streams.sources}  # result streams kept, not expired

    def _batch(self) -> Batch:
        states = [src.states for src in self.streams.sources]
        return Batch(self.s.group, self.s.results_maxlen, states, self.s.reply_ttl_s)

    def _to(self, batch: Batch, stream: str) -> str:
        """``stream``, given the reply expiry when it is a client's reply stream."""
        if stream not in self._defaults:
            batch.expire(stream)
        return stream

    async def answer(self, out: Outcome, read_more: int = 0, read_ahead: ReadAhead | None = None) -> Read:
        """Publish every result and acknowledge, in one script call, every entry of ``out``
        whose answer was written; with ``read_more`` (and ``read_ahead`` to queue the
        read), read up to that many new entries in the same round trip and return them.
        Raises what Redis raised (nothing is acknowledged then); an answer Redis refused to
        write leaves its entry pending."""
        s, reqs = self.s, out.reqs
        queue = [max(0.0, out.now_ms - entry_time_ms(r.entry_id)) for r in reqs]
        batch = self._batch()
        # Tails are registered after the entries are encoded (so latency_ms covers the
        # encoding too); their indexes are fixed now: a group's g + 1, errors the next.
        ok = out.answered
        err_tail = len(out.served) + 1 if ok < len(reqs) else 0
        band = s.dead_band
        op_of: dict[int, int] = {}  # an op (as numbered by the batch) → the entry it answers
        dead_ops: set[int] = set()
        for g, served in enumerate(out.served, start=1):
            batch.start_group(g)
            for i, a in zip(served.where, served.actions, strict=True):
                r = reqs[i]
                op_of[
                    batch.ok(
                        self._to(batch, r.reply_to), r.id, r.entry_id, r.pair, *ok_values(a, band, queue[i])
                    )
                ] = i
        if err_tail:
            deliveries = out.deliveries or {}
            for i, (r, (eid, received), q) in enumerate(zip(reqs, out.entries, queue, strict=True)):
                if r.error is None:
                    continue
                if r.error in DEAD_LETTER_CODES:
                    fields = dead_letter_fields(
                        r.entry_id,
                        received,
                        self.streams.states,
                        s.consumer,
                        r.error,
                        r.detail,
                        deliveries.get(eid),
                    )
                    op = batch.xadd(self.streams.dead, fields, s.dead_maxlen, answers=(0, r.entry_id))
                    op_of[op] = i
                    dead_ops.add(op)
                op = batch.xadd(
                    self._to(batch, r.reply_to),
                    error_fields(r, q),
                    s.results_maxlen,
                    err_tail,
                    (0, r.entry_id),
                )
                op_of[op] = i
        latency = time.perf_counter() - out.t_read
        for served in out.served:
            batch.tail(batch_tail(s.consumer, out.infer_s, latency, len(reqs), served.model.fields))
        if err_tail:
            batch.tail(batch_tail(s.consumer, out.infer_s, latency, len(reqs)))
        ahead, failed = await self._publish(batch, read_more, read_ahead)
        if self.state.refusals and not any(refused(error) for _, error in failed):
            self.state.writes_accepted(self.streams.shard)  # a refusal episode is over
        outcome = Counter[str](r.error or "ok" for r in reqs)
        dead = sum(1 for r in reqs if r.error in DEAD_LETTER_CODES)
        # Published: nothing below may raise into the loop, which would answer the batch again.
        pending: set[int] = set()
        if failed:
            try:
                lost, pending = await self._after_failures(failed, op_of, dead_ops, out, queue, outcome)
                dead -= lost
            except Exception:  # the written answers are acknowledged; the rest stay pending
                logger.exception("handling the answers Redis did not write failed")
        try:
            self._count(+outcome, dead, out, latency, queue, pending)
        except Exception:  # an observer (metrics) must not undo a publish
            logger.exception("counting a published batch failed")
        return ahead

    async def _publish(
        self, batch: Batch, read_more: int, read_ahead: ReadAhead | None
    ) -> tuple[Read, list[tuple[int, str]]]:
        """Run the script (with a read of the next batch in the same round trip)."""
        redis = self.state.redis
        if not read_more or read_ahead is None:
            return Read(), await batch.run(redis, self.script)
        queue_read, parse_read = read_ahead
        pipe = redis.pipeline(transaction=False)
        batch.queue(pipe, self.script)
        queue_read(pipe, read_more)
        published, resp = await pipe.execute(raise_on_error=False)
        ahead = Read()
        if isinstance(resp, Exception):  # the next plain read will meet it again (or load the script)
            if not isinstance(resp, NoScriptError):
                logger.warning("read-ahead failed: %s", resp)
        else:
            ahead = parse_read(resp)
        if isinstance(published, NoScriptError):  # Redis restarted or SCRIPT FLUSH
            return ahead, await batch.run(redis, self.script)
        if isinstance(published, Exception):
            raise published
        return ahead, failures(published[1])

    async def _after_failures(
        self,
        failed: list[tuple[int, str]],
        op_of: dict[int, int],
        dead_ops: set[int],
        out: Outcome,
        queue: list[float],
        outcome: Counter[str],
    ) -> tuple[int, set[int]]:
        """What the script could not write. Refused by Redis (full, read-only): the entry
        stays pending, uncounted, and the worker waits for writes (said once). A reply
        stream that cannot take it (e.g. a key that is not a stream): the answer goes to
        the default result stream as ``internal``, acknowledged there. A dead letter that
        could not be written is said. Returns how many dead letters were not written, and
        the entries left pending."""
        reqs = out.reqs
        refusals = [error for _, error in failed if refused(error)]
        pending = {op_of[op] for op, error in failed if refused(error)}
        lost_dead = 0
        elsewhere: list[tuple[int, str]] = []
        for op, error in failed:
            i = op_of[op]
            if i in pending:
                continue
            if op in dead_ops:
                lost_dead += 1
                logger.error("the dead letter of %s was not written: %s", reqs[i].entry_id, error)
            else:
                elsewhere.append((i, error))
        for i in pending:
            outcome[reqs[i].error or "ok"] -= 1
            if reqs[i].error in DEAD_LETTER_CODES:
                lost_dead += 1
        if refusals:
            self.state.writes_refused(refusals[0], len(pending), self.streams.shard)
        if elsewhere:
            pending |= await self._answer_elsewhere(elsewhere, out, queue, outcome)
        return lost_dead, pending

    async def _answer_elsewhere(
        self, failed: list[tuple[int, str]], out: Outcome, queue: list[float], outcome: Counter[str]
    ) -> set[int]:
        """An XADD to a ``reply_to`` that is not a stream (WRONGTYPE) fails alone: the
        entry's answer goes to the default stream, as ``internal`` (and is counted so),
        acknowledged in that call; if that is refused too, it stays pending (returned)."""
        batch = self._batch()
        tail = batch.tail(batch_tail(self.s.consumer, 0.0, 0.0, 1))
        moved: dict[int, int] = {}
        for i, error in failed:
            r = out.reqs[i]
            logger.warning(
                "result for %s could not go to %r (%s); sending it to %s instead",
                r.entry_id,
                r.reply_to,
                error,
                self.streams.results,
            )
            instead = Request(r.entry_id, r.id, self.streams.results, r.pair).fail(
                "internal", f"the result could not be written to {r.reply_to!r} (is that key a stream?)"
            )
            op = batch.xadd(
                self.streams.results,
                error_fields(instead, queue[i]),
                self.s.results_maxlen,
                tail,
                (0, r.entry_id),
            )
            moved[op] = i
            outcome[r.error or "ok"] -= 1
            outcome["internal"] += 1
        left: set[int] = set()
        for op, error in await batch.run(self.state.redis, self.script):
            left.add(moved[op])
            outcome["internal"] -= 1
            if refused(error):
                self.state.writes_refused(error, 1, self.streams.shard)
            else:
                logger.error(
                    "the answer to %s could not be written anywhere (%s): left pending",
                    out.reqs[moved[op]].entry_id,
                    error,
                )
        return left

    def _count(
        self,
        outcome: Counter[str],
        dead: int,
        out: Outcome,
        latency: float,
        queue: list[float],
        pending: set[int],
    ) -> None:
        st = self.state.stats
        st.batches += 1
        st.results.update(outcome)
        st.dead_lettered += dead
        for served in out.served:
            answered = (
                len(served.where) - len(pending.intersection(served.where)) if pending else len(served.where)
            )
            st.by_model[self.state.models.route_key(served.model)] += answered
        for observe in self.observers:
            observe(outcome, out.infer_s, latency, queue)
