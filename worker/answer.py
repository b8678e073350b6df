"""The one place that answers: a decoded (and inferred) batch becomes its result
entries, dead letters and acknowledgements, published in one atomic server-side
script call, one round trip. It re-routes results whose ``reply_to`` cannot be
written, and it alone counts outcomes and notifies observers (metrics), for the
consume loop and for recovery alike.

A MULTI/EXEC of ~130 commands cost the worker a client-side command and a QUEUED
reply per entry; the script takes the whole batch as one command's arguments.
Like MULTI it runs atomically (no other client sees a result without its
acknowledgement). An XADD that fails (a ``reply_to`` key that is not a stream)
does not stop the script: its index is returned so the entry is answered
elsewhere. An ok result travels as six or seven values; the script, generated
from ``protocol.OK_FIELDS``, spells the names (sending ~18 names and values per
result cost the worker 17 % of its time in packing alone)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from worker.connection import Client
from worker.model import ServedModel
from worker.protocol import (
    OK_FIELDS,
    Entries,
    Request,
    batch_tail,
    dead_letter_fields,
    entry_time_ms,
    error_fields,
    ok_values,
)
from worker.shards import Streams
from worker.state import ServerState

logger = logging.getLogger(__name__)

# (entries by outcome: "ok" or an error code, infer seconds, batch latency seconds, queue_ms per entry)
BatchObserver = Callable[[Counter[str], float, float, list[float]], None]

DEAD_LETTER_CODES = frozenset({"invalid_state", "too_large", "internal"})


def _ok_table(names: Sequence[str]) -> tuple[str, list[int]]:
    """The Lua literal of an ok result's XADD arguments, and the 1-based slots its
    values fill (the stream key is slot 2; the MAXLEN value is the script's)."""
    items = ["'XADD'", "''", "'MAXLEN'", "'~'", "maxlen", "'*'"]
    slots = []
    for name in names:
        items.append(f"'{name}'")
        items.append("'ok'" if name == "status" else "''")
        if name != "status":
            slots.append(len(items))
    return "{" + ", ".join(items) + "}", slots


def _fill(table: str, slots: list[int]) -> str:
    """Lua that points ``args`` at ``table`` and fills its key and value slots from ARGV."""
    targets = ", ".join(["args[2]"] + [f"args[{s}]" for s in slots])
    sources = ", ".join(["KEYS[k]"] + [f"ARGV[i + {j}]" for j in range(1, len(slots) + 1)])
    return f"args = {table}\n      {targets} = {sources}\n      i = i + {len(slots) + 1}"


def _publish_lua() -> str:
    plain_names = [n for n in OK_FIELDS if n != "pair"]
    plain, plain_slots = _ok_table(plain_names)
    paired, paired_slots = _ok_table(OK_FIELDS)
    values = [n for n in OK_FIELDS if n != "status"]
    entry_plain = plain_slots[[n for n in values if n != "pair"].index("entry_id")]
    entry_paired = paired_slots[values.index("entry_id")]
    return f"""
local group = ARGV[1]
local maxlen = ARGV[2]
local ntails = tonumber(ARGV[3])
local i = 4
local tails = {{}}
for t = 1, ntails do
  local n = tonumber(ARGV[i])
  tails[t] = {{unpack(ARGV, i + 1, i + n)}}
  i = i + 1 + n
end
local failed = {{}}
local ids = {{}}
local ngroups = tonumber(ARGV[i])
i = i + 1
local op = 0
for g = 1, ngroups do
  -- A group: the ok results of one model, sharing its tail. One argument table per
  -- shape (without, with a pair), built once per group with the tail in place; each
  -- result only overwrites its own slots. (A fresh table per result, tail copied in,
  -- was most of the script's time: 5.8 us a result.)
  local tail = tails[tonumber(ARGV[i])] or {{}}
  local nok = tonumber(ARGV[i + 1])
  i = i + 2
  local plain = {plain}
  local paired = {paired}
  local np, nq = #plain, #paired
  for j = 1, #tail do plain[np + j] = tail[j]; paired[nq + j] = tail[j] end
  for _ = 1, nok do
    op = op + 1
    local k = tonumber(ARGV[i])
    local args
    if k > 0 then
      {_fill("plain", plain_slots)}
      ids[op] = args[{entry_plain}]
    else
      k = -k
      {_fill("paired", paired_slots)}
      ids[op] = args[{entry_paired}]
    end
    local reply = redis.pcall(unpack(args))
    if type(reply) == 'table' and reply.err then failed[#failed + 1] = op - 1 end
  end
end
local nops = tonumber(ARGV[i])
i = i + 1
for op = 1, nops do
  local nf = tonumber(ARGV[i + 2])
  local args = {{'XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', ARGV[i + 1], '*'}}
  for j = 1, nf do args[6 + j] = ARGV[i + 2 + j] end
  local t = tonumber(ARGV[i + 3 + nf])
  if t > 0 then
    local n = 6 + nf
    for j, v in ipairs(tails[t]) do args[n + j] = v end
  end
  local reply = redis.pcall(unpack(args))
  if type(reply) == 'table' and reply.err then failed[#failed + 1] = -op end
  i = i + 4 + nf
end
local nids = tonumber(ARGV[i])
for j = 1, nids do ids[#ids + 1] = ARGV[i + j] end
local acked = 0
local first = 1
while first <= #ids do
  local last = math.min(first + 999, #ids)
  acked = acked + redis.call('XACK', KEYS[1], group, unpack(ids, first, last))
  first = last + 1
end
return {{acked, failed}}
"""


# KEYS[1] = the states stream, KEYS[2..] = streams written to.
# ARGV = group, results maxlen, n_tails, per tail: n_args, args...,
#        n_groups, per group: its tail index, n_ok, per ok result: key index (negative:
#          a pair follows), the values of OK_FIELDS but status (pair only with a negative key index),
#        n_ops, per op: key index, maxlen, n_field_args, field args..., tail index (0 = none),
#        n_ids, ids to acknowledge besides the ok results' entry_ids.
# Returns {acked, failed}: failed lists ok results by index (0, 1, ... across groups)
# and other ops by -(their index + 1).
PUBLISH_LUA = _publish_lua()


@dataclass
class Batch:
    """Ops of one script call, flattened for the script as they are added.

    ``ok`` results take 6 or 7 arguments (the script adds the field names and the
    tail of their group, one group per model, and acknowledges their entries);
    anything else (errors, dead letters) goes through ``xadd`` with its fields
    spelled out."""

    states_stream: str
    group: str
    results_maxlen: int
    keys: list[str] = field(default_factory=list)
    _index: dict[str, str] = field(default_factory=dict)
    oks: list[Any] = field(default_factory=list)  # per group: tail index, n_ok, values...
    args: list[Any] = field(default_factory=list)
    tails: list[Any] = field(default_factory=list)
    n_ok: int = 0
    n_groups: int = 0
    _count_at: int = -1  # where the current group's n_ok sits in ``oks``
    n_ops: int = 0
    n_tails: int = 0

    def __post_init__(self) -> None:
        self.keys.append(self.states_stream)

    def _key(self, stream: str) -> str:
        k = self._index.get(stream)
        if k is None:
            self.keys.append(stream)
            k = self._index[stream] = str(len(self.keys))
        return k

    def tail(self, fields: dict[str, str]) -> int:
        """Register fields appended to every XADD that names this tail; its index."""
        self.tails.append(2 * len(fields))
        for item in fields.items():
            self.tails.extend(item)
        self.n_tails += 1
        return self.n_tails

    def ok(
        self,
        stream: str,
        cid: str,
        entry_id: str,
        pair: str | None,
        action: str,
        discrete: str,
        queue_ms: str,
    ) -> int:
        """Queue an ok result in the current group (its entry is acknowledged with it);
        returns its index among all ok results."""
        k = self._key(stream)
        self.oks[self._count_at] += 1
        if pair is None:
            self.oks += (k, cid, entry_id, action, discrete, queue_ms)
        else:
            self.oks += ("-" + k, cid, entry_id, pair, action, discrete, queue_ms)
        self.n_ok += 1
        return self.n_ok - 1

    def start_group(self, tail: int) -> None:
        """The next ok results share the tail of index ``tail`` (registered later or now)."""
        self.oks += (tail, 0)
        self._count_at = len(self.oks) - 1
        self.n_groups += 1

    def xadd(self, stream: str, fields: dict[Any, Any], maxlen: int, tail: int = 0) -> int:
        """Queue an XADD of ``fields`` (then the tail's, if any); returns -(its index + 1)."""
        flat = [x for item in fields.items() for x in item]
        self.args += (self._key(stream), maxlen, len(flat), *flat, tail)
        self.n_ops += 1
        return -self.n_ops

    def argv(self, ids: list[str]) -> list[Any]:
        return [
            self.group,
            self.results_maxlen,
            self.n_tails,
            *self.tails,
            self.n_groups,
            *self.oks,
            self.n_ops,
            *self.args,
            len(ids),
            *ids,
        ]

    async def run(self, redis: Client, script: AsyncScript, ids: list[str]) -> list[int]:
        """Execute; the ops that failed, as ``ok``/``xadd`` returned them. ``ids``
        are the entries to acknowledge besides those of the ok results."""
        _, failed = await script(keys=self.keys, args=self.argv(ids), client=redis)
        return [int(x) for x in failed]

    def queue(self, pipe: Any, script: AsyncScript, ids: list[str]) -> None:
        """Add the script call to a pipeline by its sha (its reply: [acked, failed]).

        Not through redis-py's Script-in-pipeline, which sends SCRIPT EXISTS first:
        a round trip on every batch. A server that lost the script answers
        NOSCRIPT, and the caller runs the batch again with ``run`` (which loads it)."""
        pipe.evalsha(script.sha, len(self.keys), *self.keys, *self.argv(ids))


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

    def _batch(self) -> Batch:
        return Batch(self.streams.states, self.s.group, self.s.results_maxlen)

    async def answer(self, out: Outcome, read_more: int = 0) -> Entries:
        """Publish every result and acknowledge every entry of ``out`` in one script
        call; with ``read_more``, read up to that many new entries in the same round
        trip and return them. Raises what Redis raised (nothing is acknowledged then)."""
        s, reqs = self.s, out.reqs
        queue = [max(0.0, out.now_ms - entry_time_ms(r.entry_id)) for r in reqs]
        batch = self._batch()
        # Tails are registered after the entries are encoded (so latency_ms covers the
        # encoding too); their indexes are fixed now: a group's g + 1, errors the next.
        ok = out.answered
        err_tail = len(out.served) + 1 if ok < len(reqs) else 0
        band = s.dead_band
        for g, served in enumerate(out.served, start=1):
            batch.start_group(g)
            for i, a in zip(served.where, served.actions, strict=True):
                r = reqs[i]
                batch.ok(r.reply_to, r.id, r.entry_id, r.pair, *ok_values(a, band, queue[i]))
        errors: list[tuple[int, Request, float]] = []  # (op, entry, its queue_ms)
        dead = 0
        if err_tail:
            deliveries = out.deliveries or {}
            for r, (eid, received), q in zip(reqs, out.entries, queue, strict=True):
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
                    batch.xadd(self.streams.dead, fields, s.dead_maxlen)
                    dead += 1
                errors.append((batch.xadd(r.reply_to, error_fields(r, q), s.results_maxlen, err_tail), r, q))
        latency = time.perf_counter() - out.t_read
        for served in out.served:
            batch.tail(batch_tail(s.consumer, out.infer_s, latency, len(reqs), served.model.fields))
        if err_tail:
            batch.tail(batch_tail(s.consumer, out.infer_s, latency, len(reqs)))
        ids = [r.entry_id for _, r, _ in errors]  # the ok results' entries are acknowledged with them
        ahead, failed = await self._publish(batch, ids, read_more)
        outcome = Counter[str](r.error or "internal" for _, r, _ in errors)
        if ok:
            outcome["ok"] = ok
        # Published and acknowledged: nothing below may raise into the loop, which would
        # answer the batch again.
        if failed:
            in_order = [i for served in out.served for i in served.where]  # as the script numbered them
            sent = [(j, reqs[i], queue[i]) for j, i in enumerate(in_order)] + errors
            try:
                await self._answer_elsewhere(failed, sent, outcome)
            except Exception as exc:  # noqa: BLE001 - the entries are acknowledged already
                logger.error(
                    "%d answers re-routed to %s were lost: %s", len(failed), self.streams.results, exc
                )
        try:
            self._count(outcome, dead, out, latency, queue)
        except Exception:  # an observer (metrics) must not undo a publish
            logger.exception("counting a published batch failed")
        return ahead

    async def _publish(self, batch: Batch, ids: list[str], read_more: int) -> tuple[Entries, list[int]]:
        """Run the script (with a read of the next batch in the same round trip)."""
        redis = self.state.redis
        if not read_more:
            return [], await batch.run(redis, self.script, ids)
        pipe = redis.pipeline(transaction=False)
        batch.queue(pipe, self.script, ids)
        pipe.xreadgroup(self.s.group, self.s.consumer, {self.streams.states: ">"}, count=read_more)
        published, resp = await pipe.execute(raise_on_error=False)
        ahead: Entries = []
        if isinstance(resp, Exception):  # the next plain read will meet it again
            logger.warning("read-ahead failed: %s", resp)
        elif resp:
            ahead = resp[0][1]
        if isinstance(published, NoScriptError):  # Redis restarted or SCRIPT FLUSH
            return ahead, await batch.run(redis, self.script, ids)
        if isinstance(published, Exception):
            raise published
        return ahead, [int(x) for x in published[1]]

    async def _answer_elsewhere(
        self, failed: list[int], sent: list[tuple[int, Request, float]], outcome: Counter[str]
    ) -> None:
        """An XADD to a ``reply_to`` that is not a stream (WRONGTYPE) fails alone; the
        entry is acknowledged all the same, so its answer goes to the default stream,
        as ``internal`` (and is counted so)."""
        bad = set(failed)
        batch = self._batch()
        tail = batch.tail(batch_tail(self.s.consumer, 0.0, 0.0, 1))
        for index, r, queue_ms in sent:
            if index not in bad:
                continue
            logger.warning(
                "result for %s could not go to %r; sent to %s instead",
                r.entry_id,
                r.reply_to,
                self.streams.results,
            )
            outcome[r.error or "ok"] -= 1
            outcome["internal"] += 1
            moved = Request(r.entry_id, r.id, self.streams.results, r.pair).fail(
                "internal", f"the result could not be written to {r.reply_to!r} (is that key a stream?)"
            )
            batch.xadd(self.streams.results, error_fields(moved, queue_ms), self.s.results_maxlen, tail)
        await batch.run(self.state.redis, self.script, [])

    def _count(
        self, outcome: Counter[str], dead: int, out: Outcome, latency: float, queue: list[float]
    ) -> None:
        outcome = +outcome  # drop the codes that re-routing took to zero
        st = self.state.stats
        st.batches += 1
        st.results.update(outcome)
        st.dead_lettered += dead
        for served in out.served:
            st.by_model[self.state.models.route_key(served.model)] += len(served.where)
        for observe in self.observers:
            observe(outcome, out.infer_s, latency, queue)
