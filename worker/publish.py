"""Publishing a batch: every result (and dead letter) XADDed and every entry
acknowledged in one atomic server-side script, one round trip, one command.

A MULTI/EXEC of ~130 commands cost the worker a client-side command and a
QUEUED reply per entry; the script takes the whole batch as one command's
arguments. Like MULTI it runs atomically (no other client sees a result
without its acknowledgement). An XADD that fails (a ``reply_to`` key that is
not a stream) does not stop the script: its index is returned so the caller
can answer that entry elsewhere.

An ok result travels as six or seven values (the script knows the field
names, and acknowledges its entry by the entry_id it carries): sending ~18
names and values per result cost the worker 17 % of its time in packing alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

# KEYS[1] = the states stream, KEYS[2..] = streams written to.
# ARGV = group, results maxlen, n_tails, per tail: n_args, args...,
#        n_ok, ok tail index, per ok result: key index (negative: a pair follows),
#          id, entry_id, [pair], action, discrete, queue_ms,
#        n_ops, per op: key index, maxlen, n_field_args, field args..., tail index (0 = none),
#        n_ids, ids to acknowledge besides the ok results' entry_ids.
# Returns {acked, failed}: failed lists ok results by index (0, 1, ...) and other
# ops by -(their index + 1).
PUBLISH_LUA = """
local group = ARGV[1]
local maxlen = ARGV[2]
local ntails = tonumber(ARGV[3])
local i = 4
local tails = {}
for t = 1, ntails do
  local n = tonumber(ARGV[i])
  tails[t] = {unpack(ARGV, i + 1, i + n)}
  i = i + 1 + n
end
local failed = {}
local ids = {}
local nok = tonumber(ARGV[i])
local tail = tails[tonumber(ARGV[i + 1])] or {}
i = i + 2
-- One argument table per shape (without, with a pair), built once per batch with
-- the tail in place; each result only overwrites its own slots. (A fresh table
-- per result, tail copied in, was most of the script's time: 5.8 us a result.)
local plain = {'XADD', '', 'MAXLEN', '~', maxlen, '*', 'id', '', 'entry_id', '',
               'status', 'ok', 'action', '', 'discrete', '', 'queue_ms', ''}
local paired = {'XADD', '', 'MAXLEN', '~', maxlen, '*', 'id', '', 'entry_id', '', 'pair', '',
                'status', 'ok', 'action', '', 'discrete', '', 'queue_ms', ''}
for j = 1, #tail do plain[18 + j] = tail[j]; paired[20 + j] = tail[j] end
for op = 1, nok do
  local k = tonumber(ARGV[i])
  local args
  if k > 0 then
    args = plain
    args[2], args[8], args[10] = KEYS[k], ARGV[i + 1], ARGV[i + 2]
    args[14], args[16], args[18] = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    i = i + 6
  else
    args = paired
    args[2], args[8], args[10], args[12] = KEYS[-k], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    args[16], args[18], args[20] = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
    i = i + 7
  end
  ids[op] = args[10]
  local reply = redis.pcall(unpack(args))
  if type(reply) == 'table' and reply.err then failed[#failed + 1] = op - 1 end
end
local nops = tonumber(ARGV[i])
i = i + 1
for op = 1, nops do
  local nf = tonumber(ARGV[i + 2])
  local args = {'XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', ARGV[i + 1], '*'}
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
return {acked, failed}
"""


@dataclass
class Batch:
    """Ops of one batch, flattened for the script as they are added.

    ``ok`` results take 6 or 7 arguments (the script adds the field names and the
    batch's shared tail, and acknowledges their entries); anything else
    (errors, dead letters) goes through ``xadd`` with its fields spelled out."""

    states_stream: str
    group: str
    results_maxlen: int
    keys: list[str] = field(default_factory=list)
    _index: dict[str, str] = field(default_factory=dict)
    oks: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    tails: list[Any] = field(default_factory=list)
    n_ok: int = 0
    ok_tail: int = 0
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
        """Queue an ok result (its entry is acknowledged with it); returns its index."""
        k = self._index.get(stream) or self._key(stream)
        if pair is None:
            self.oks += (k, cid, entry_id, action, discrete, queue_ms)
        else:
            self.oks += ("-" + k, cid, entry_id, pair, action, discrete, queue_ms)
        self.n_ok += 1
        return self.n_ok - 1

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
            self.n_ok,
            self.ok_tail,
            *self.oks,
            self.n_ops,
            *self.args,
            len(ids),
            *ids,
        ]

    async def run(self, redis: Redis, script: Any, ids: list[str]) -> tuple[int, list[int]]:
        """Execute: (entries acknowledged, the ops that failed as ``ok``/``xadd`` returned them).
        ``ids`` are the entries to acknowledge besides those of the ok results."""
        acked, failed = await script(keys=self.keys, args=self.argv(ids), client=redis)
        return int(acked), [int(x) for x in failed]

    def queue(self, pipe: Any, script: Any, ids: list[str]) -> None:
        """Add the script call to a pipeline by its sha (its reply: [acked, failed]).

        Not through redis-py's Script-in-pipeline, which sends SCRIPT EXISTS first:
        a round trip on every batch. A server that lost the script answers
        NOSCRIPT, and the caller runs the batch again with ``run`` (which loads it)."""
        pipe.evalsha(script.sha, len(self.keys), *self.keys, *self.argv(ids))
