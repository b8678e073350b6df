"""The publish script and the batch it runs: a batch's results, dead letters and
acknowledgements in one atomic server-side script call, one round trip.

An entry is acknowledged only in the call that wrote its answer: its result, or (for an
entry being dead-lettered) its dead letter. An XADD the server refuses (OOM under
``maxmemory``, READONLY on a replica, WRONGTYPE on a ``reply_to`` that is not a stream)
does not stop the script: it is reported, with Redis's error, and its entry is left
pending, for the answerer (worker/answer.py) to route elsewhere or retry.

A MULTI/EXEC of ~130 commands cost the worker a client-side command and a QUEUED
reply per entry; the script takes the whole batch as one command's arguments. Like
MULTI it runs atomically (no other client sees a result without its
acknowledgement). An ok result travels as six or seven values; the script, generated
from ``protocol.OK_FIELDS``, spells the names (sending ~18 names and values per result
cost the worker 17 % of its time in packing alone)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from worker.connection import Client
from worker.protocol import OK_FIELDS

# Redis's answers to a write it refuses for a reason of the server's, not of the key's:
# out of memory under maxmemory (noeviction), a read-only replica, a failed RDB save with
# stop-writes-on-bgsave-error, min-replicas-to-write unmet. Retried when writes come back.
REFUSED = ("OOM", "READONLY", "MISCONF", "NOREPLICAS")


def refused(error: str) -> bool:
    """Whether Redis's error says it refuses writes at all (not this key's problem)."""
    return error.startswith(REFUSED)


def refusal(exc: BaseException) -> str | None:
    """Redis's reason, its code first, when a command failed because Redis refuses writes
    (redis-py strips the OOM and READONLY codes into exception classes); else None."""
    if isinstance(exc, OutOfMemoryError):
        return f"OOM {exc}"
    if isinstance(exc, ReadOnlyError):
        return f"READONLY {exc}"
    if isinstance(exc, ResponseError) and refused(str(exc)):
        return str(exc)
    return None


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
local expire_s = tonumber(ARGV[3])
local ntails = tonumber(ARGV[4])
local i = 5
local tails = {{}}
for t = 1, ntails do
  local n = tonumber(ARGV[i])
  tails[t] = {{unpack(ARGV, i + 1, i + n)}}
  i = i + 1 + n
end
local failed = {{}}
local written = {{}}
-- The entries whose answer was written, by the states stream they came from.
local acks, sources, seen = {{}}, {{}}, {{}}
local function answered(id, s)
  if seen[id] then return end
  seen[id] = true
  local list = acks[s]
  if not list then list = {{}}; acks[s] = list; sources[#sources + 1] = s end
  list[#list + 1] = id
end
local ngroups = tonumber(ARGV[i])
i = i + 1
local op = 0
for g = 1, ngroups do
  -- A group: the ok results of one model from one states stream, sharing its tail. One
  -- argument table per shape (without, with a pair), built once per group with the tail
  -- in place; each result only overwrites its own slots. (A fresh table per result, tail
  -- copied in, was most of the script's time: 5.8 us a result.)
  local tail = tails[tonumber(ARGV[i])] or {{}}
  local source = tonumber(ARGV[i + 1])
  local nok = tonumber(ARGV[i + 2])
  i = i + 3
  local plain = {plain}
  local paired = {paired}
  local np, nq = #plain, #paired
  for j = 1, #tail do plain[np + j] = tail[j]; paired[nq + j] = tail[j] end
  for _ = 1, nok do
    op = op + 1
    local k = tonumber(ARGV[i])
    local args, id
    if k > 0 then
      {_fill("plain", plain_slots)}
      id = args[{entry_plain}]
    else
      k = -k
      {_fill("paired", paired_slots)}
      id = args[{entry_paired}]
    end
    local reply = redis.pcall(unpack(args))
    if type(reply) == 'table' and reply.err then
      failed[#failed + 1] = op - 1
      failed[#failed + 1] = reply.err
    else
      written[k] = true
      answered(id, source)
    end
  end
end
local nops = tonumber(ARGV[i])
i = i + 1
for op = 1, nops do
  local k = tonumber(ARGV[i])
  local nf = tonumber(ARGV[i + 2])
  local args = {{'XADD', KEYS[k], 'MAXLEN', '~', ARGV[i + 1], '*'}}
  for j = 1, nf do args[6 + j] = ARGV[i + 2 + j] end
  local t = tonumber(ARGV[i + 3 + nf])
  if t > 0 then
    local n = 6 + nf
    for j, v in ipairs(tails[t]) do args[n + j] = v end
  end
  local source = tonumber(ARGV[i + 4 + nf])
  local reply = redis.pcall(unpack(args))
  if type(reply) == 'table' and reply.err then
    failed[#failed + 1] = -op
    failed[#failed + 1] = reply.err
  else
    written[k] = true
    if source > 0 then answered(ARGV[i + 5 + nf], source) end
  end
  i = i + 6 + nf
end
local nexpire = tonumber(ARGV[i])
for j = 1, nexpire do
  local k = tonumber(ARGV[i + j])
  if written[k] then redis.call('EXPIRE', KEYS[k], expire_s) end
end
local acked = 0
for _, s in ipairs(sources) do
  local ids = acks[s]
  local first = 1
  while first <= #ids do
    local last = math.min(first + 999, #ids)
    acked = acked + redis.call('XACK', KEYS[s], group, unpack(ids, first, last))
    first = last + 1
  end
end
return {{acked, failed}}
"""


# KEYS = the states streams the batch's entries came from, then the streams written to.
# ARGV = group, results maxlen, reply expiry (s), n_tails, per tail: n_args, args...,
#        n_groups, per group: its tail index, its states key index, n_ok, per ok result:
#          key index (negative: a pair follows), the values of OK_FIELDS but status,
#        n_ops, per op: key index, maxlen, n_field_args, field args..., tail index
#          (0 = none), the states key index of the entry it answers (0 = none), its id,
#        n_expire, key indexes to EXPIRE when written to.
# Returns {acked, failed}: failed lists (index, Redis's error) pairs: ok results by index
# (0, 1, ... across groups), other ops by -(their index + 1).
PUBLISH_LUA = _publish_lua()


@dataclass
class Batch:
    """Ops of one script call, flattened for the script as they are added.

    ``ok`` results take 6 or 7 arguments (the script adds the field names and the tail of
    their group, one group per model and states stream, and acknowledges their entries once
    written); anything else (errors, dead letters) goes through ``xadd`` with its fields
    spelled out and, when it answers an entry, that entry to acknowledge once written."""

    group: str
    results_maxlen: int
    states: Sequence[str]  # the states streams: KEYS[1 .. len(states)]
    expire_s: int = 0  # reply streams named with ``expire`` get this expiry when written
    keys: list[str] = field(default_factory=list)
    _index: dict[str, str] = field(default_factory=dict)
    oks: list[Any] = field(default_factory=list)  # per group: tail index, source, n_ok, values...
    args: list[Any] = field(default_factory=list)
    tails: list[Any] = field(default_factory=list)
    expiring: list[str] = field(default_factory=list)
    n_ok: int = 0
    n_groups: int = 0
    _count_at: int = -1  # where the current group's n_ok sits in ``oks``
    n_ops: int = 0
    n_tails: int = 0

    def __post_init__(self) -> None:
        self.keys.extend(self.states)

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

    def start_group(self, tail: int, source: int = 0) -> None:
        """The next ok results share the tail of index ``tail`` (registered later or now)
        and come from states stream ``source`` (an index into ``states``)."""
        self.oks += (tail, source + 1, 0)
        self._count_at = len(self.oks) - 1
        self.n_groups += 1

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
        """Queue an ok result in the current group (its entry is acknowledged once it is
        written); returns its index among all ok results."""
        k = self._key(stream)
        self.oks[self._count_at] += 1
        if pair is None:
            self.oks += (k, cid, entry_id, action, discrete, queue_ms)
        else:
            self.oks += ("-" + k, cid, entry_id, pair, action, discrete, queue_ms)
        self.n_ok += 1
        return self.n_ok - 1

    def xadd(
        self,
        stream: str,
        fields: dict[Any, Any],
        maxlen: int,
        tail: int = 0,
        answers: tuple[int, str] | None = None,
    ) -> int:
        """Queue an XADD of ``fields`` (then the tail's, if any); ``answers``: the (states
        stream index, entry id) it answers, acknowledged once it is written. Returns
        -(its index + 1)."""
        flat = [x for item in fields.items() for x in item]
        source, entry = (answers[0] + 1, answers[1]) if answers is not None else (0, "")
        self.args += (self._key(stream), maxlen, len(flat), *flat, tail, source, entry)
        self.n_ops += 1
        return -self.n_ops

    def expire(self, stream: str) -> None:
        """Give ``stream`` the batch's expiry if the call writes to it."""
        if self.expire_s > 0 and stream not in self.expiring:
            self.expiring.append(stream)

    def argv(self) -> list[Any]:
        expiring = [self._index[s] for s in self.expiring if s in self._index]
        return [
            self.group,
            self.results_maxlen,
            self.expire_s,
            self.n_tails,
            *self.tails,
            self.n_groups,
            *self.oks,
            self.n_ops,
            *self.args,
            len(expiring),
            *expiring,
        ]

    async def run(self, redis: Client, script: AsyncScript) -> list[tuple[int, str]]:
        """Execute; the ops that failed (as ``ok``/``xadd`` numbered them) with Redis's error."""
        _, failed = await script(keys=self.keys, args=self.argv(), client=redis)
        return failures(failed)

    def queue(self, pipe: Any, script: AsyncScript) -> None:
        """Add the script call to a pipeline by its sha (its reply: [acked, failed]).

        Not through redis-py's Script-in-pipeline, which sends SCRIPT EXISTS first:
        a round trip on every batch. A server that lost the script answers
        NOSCRIPT, and the caller runs the batch again with ``run`` (which loads it)."""
        pipe.evalsha(script.sha, len(self.keys), *self.keys, *self.argv())


def failures(failed: Sequence[Any]) -> list[tuple[int, str]]:
    """The script's flat (index, error) list as pairs, errors as text."""
    out = []
    for j in range(0, len(failed), 2):
        error = failed[j + 1]
        out.append((int(failed[j]), error.decode() if isinstance(error, bytes) else str(error)))
    return out
