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
# ARGV = group, n_ops, then per op: key index, maxlen, n_field_args, field args...,
#        then n_ids, ids...
PUBLISH_LUA = """
local group = ARGV[1]
local nops = tonumber(ARGV[2])
local i = 3
local failed = {}
for op = 1, nops do
  local key = KEYS[tonumber(ARGV[i])]
  local nf = tonumber(ARGV[i + 2])
  local args = {'XADD', key, 'MAXLEN', '~', ARGV[i + 1], '*'}
  for j = 1, nf do args[6 + j] = ARGV[i + 2 + j] end
  local reply = redis.pcall(unpack(args))
  if type(reply) == 'table' and reply.err then failed[#failed + 1] = op - 1 end
  i = i + 3 + nf
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
    n_ops: int = 0

    def __post_init__(self) -> None:
        self.keys.append(self.states_stream)

    def xadd(self, stream: str, fields: dict[Any, Any], maxlen: int) -> int:
        """Queue an XADD; returns its op index."""
        k = self._index.get(stream)
        if k is None:
            self.keys.append(stream)
            k = self._index[stream] = len(self.keys)
        args = self.args
        args.append(k)
        args.append(maxlen)
        args.append(2 * len(fields))
        for item in fields.items():
            args.extend(item)
        self.n_ops += 1
        return self.n_ops - 1

    async def run(self, redis: Redis, script: Any, ids: list[str]) -> tuple[int, list[int]]:
        """Execute: (entries acknowledged, indexes of the XADDs that failed)."""
        argv = [self.group, self.n_ops, *self.args, len(ids), *ids]
        acked, failed = await script(keys=self.keys, args=argv, client=redis)
        return int(acked), [int(x) for x in failed]
