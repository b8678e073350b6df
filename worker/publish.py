"""Publishing a batch: every result (and dead letter) XADDed and every entry
acknowledged in one atomic server-side script, one round trip, one command.

A MULTI/EXEC of ~130 commands cost the worker a client-side command and a
QUEUED reply per entry; the script takes the whole batch as one command's
arguments. Like MULTI it runs atomically (no other client sees a result
without its acknowledgement). An XADD that fails (a ``reply_to`` key that is
not a stream) does not stop the script: its index is returned so the caller
can answer that entry elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

# KEYS[1] = the states stream, KEYS[2..] = streams written to.
# ARGV = group, n_tails, per tail: n_args, args..., n_ops, per op: key index,
#        maxlen, n_field_args, field args..., tail index (0 = none), then n_ids, ids...
PUBLISH_LUA = """
local group = ARGV[1]
local ntails = tonumber(ARGV[2])
local i = 3
local tails = {}
for t = 1, ntails do
  local n = tonumber(ARGV[i])
  tails[t] = {unpack(ARGV, i + 1, i + n)}
  i = i + 1 + n
end
local nops = tonumber(ARGV[i])
i = i + 1
local failed = {}
for op = 1, nops do
  local nf = tonumber(ARGV[i + 2])
  local args = {'XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', ARGV[i + 1], '*'}
  for j = 1, nf do args[6 + j] = ARGV[i + 2 + j] end
  local tail = tonumber(ARGV[i + 3 + nf])
  if tail > 0 then
    local n = 6 + nf
    for j, v in ipairs(tails[tail]) do args[n + j] = v end
  end
  local reply = redis.pcall(unpack(args))
  if type(reply) == 'table' and reply.err then failed[#failed + 1] = op - 1 end
  i = i + 4 + nf
end
local nids = tonumber(ARGV[i])
local acked = 0
local first = i + 1
while first <= i + nids do
  local last = math.min(first + 999, i + nids)
  acked = acked + redis.call('XACK', KEYS[1], group, unpack(ARGV, first, last))
  first = last + 1
end
return {acked, failed}
"""


@dataclass
class Batch:
    """Ops of one batch, flattened for the script as they are added."""

    states_stream: str
    group: str
    keys: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    tails: list[Any] = field(default_factory=list)
    n_ops: int = 0
    n_tails: int = 0

    def __post_init__(self) -> None:
        self.keys.append(self.states_stream)

    def tail(self, fields: dict[str, str]) -> int:
        """Register fields appended to every XADD that names this tail; its index."""
        self.tails.append(2 * len(fields))
        for item in fields.items():
            self.tails.extend(item)
        self.n_tails += 1
        return self.n_tails

    def xadd(self, stream: str, fields: dict[Any, Any], maxlen: int, tail: int = 0) -> int:
        """Queue an XADD of ``fields`` (then the tail's, if any); returns its op index."""
        return self.xadd_flat(stream, [x for item in fields.items() for x in item], maxlen, tail)

    def xadd_flat(self, stream: str, flat: tuple[Any, ...] | list[Any], maxlen: int, tail: int = 0) -> int:
        """``xadd`` with the fields already flat: name, value, name, value, …"""
        k = self._index.get(stream)
        if k is None:
            self.keys.append(stream)
            k = self._index[stream] = len(self.keys)
        self.args += (k, maxlen, len(flat), *flat, tail)
        self.n_ops += 1
        return self.n_ops - 1

    def argv(self, ids: list[str]) -> list[Any]:
        return [self.group, self.n_tails, *self.tails, self.n_ops, *self.args, len(ids), *ids]

    async def run(self, redis: Redis, script: Any, ids: list[str]) -> tuple[int, list[int]]:
        """Execute: (entries acknowledged, indexes of the XADDs that failed)."""
        acked, failed = await script(keys=self.keys, args=self.argv(ids), client=redis)
        return int(acked), [int(x) for x in failed]

    def queue(self, pipe: Any, script: Any, ids: list[str]) -> None:
        """Add the script call to a pipeline by its sha (its reply: [acked, failed]).

        Not through redis-py's Script-in-pipeline, which sends SCRIPT EXISTS first:
        a round trip on every batch. A server that lost the script answers
        NOSCRIPT, and the caller runs the batch again with ``run`` (which loads it)."""
        pipe.evalsha(script.sha, len(self.keys), *self.keys, *self.argv(ids))
