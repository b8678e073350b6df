"""Reading states without trusting their size.

New states are read with plain XREADGROUP on connections whose every reply is bounded
(MAX_REPLY_BYTES, worker/connection.py): a reply past it is refused before it is all in
memory, the connection dropped, and the entries it delivered (pending now) are read again
as history, through the script here. Before, a read of up to 128 entries pulled every
payload into the worker: 20 entries of 25 MB took 7 of 7 workers down under a 1.5 GB
address-space cap, and the 5-delivery dead-letter rule never fired, since that path read
the payloads too.

The script (history, entries read by id, reclaims; and every read when replies cannot be
bounded) returns each entry's small fields and withholds the rest: a value larger than
MAX_FIELD_BYTES stays in Redis and the worker gets its size (``protocol.Withheld``),
answers the entry ``too_large`` and dead-letters what fits; an entry with more than
MAX_FIELDS fields keeps only its addressing fields; past READ_BUDGET_BYTES a read returns
the entries it delivered by id (``deferred``), read by id next. It costs Redis about 4 µs
an entry more than a plain read (converting the reply into Lua and back), which is why
the hot path does not use it.

Reclaiming (XAUTOCLAIM) goes through a script as well: it claims ids only (JUSTID), bumps
each one's delivery count as a plain claim would (XCLAIM RETRYCOUNT), and returns the
payloads the same bounded way, so a poison entry is dead-lettered without being read."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.protocol import GONE, MAX_FIELDS, WITHHELD_FIELDS, Entries, Withheld

READ_BUDGET_BYTES = 4 << 20  # payload bytes one read returns at most (past its first entry)
KEEP = ("id", "reply_to", "pair", "ttl_ms", "contract")  # kept of an entry with too many fields

_SHAPE = """
local max_value = tonumber(ARGV[2])
local max_fields = 2 * tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local keep = KEEP_TABLE
local used, taken, over = 0, 0, false
-- One entry as the worker gets it. Most entries: {id, fields}, the very table Redis gave
-- (nothing copied). An entry with a value over max_value, a name over 256 bytes or more
-- than max_fields fields: {id, fields kept (withheld values as ''), withheld (name, size)
-- pairs}. Past the budget: {id, 1} (deferred: read by id next). No payload: {id, 0}.
local function shape(id, fields)
  if not fields then return {id, 0} end
  if over then return {id, 1} end
  local n, kept, odd = #fields, 0, false
  if n <= max_fields then
    for j = 1, n do
      local l = #fields[j]
      if l > max_value or (j % 2 == 1 and l > 256) then odd = true; break end
      kept = kept + l
    end
  else
    odd = true
  end
  if odd then
    local flat, held = {}, {}
    kept = 0
    for j = 1, n, 2 do
      local name, v = fields[j], fields[j + 1]
      if n > max_fields and not keep[name] then
        -- counted under the marker below, not read
      elseif #v > max_value or #name > 256 then
        flat[#flat + 1] = string.sub(name, 1, 256)
        flat[#flat + 1] = ''
        held[#held + 1] = string.sub(name, 1, 256)
        held[#held + 1] = #v + #name
      else
        flat[#flat + 1] = name
        flat[#flat + 1] = v
        kept = kept + #v + #name
      end
    end
    if n > max_fields then
      held[#held + 1] = '\\0fields'
      held[#held + 1] = n / 2
    end
    fields = nil
    if taken > 0 and used + kept > budget then over = true; return {id, 1} end
    used = used + kept
    taken = taken + 1
    return {id, flat, held}
  end
  if taken > 0 and used + kept > budget then over = true; return {id, 1} end
  used = used + kept
  taken = taken + 1
  return {id, fields}
end
""".replace("KEEP_TABLE", "{" + ", ".join(f"['{name}'] = true" for name in KEEP) + "}")

# KEYS: the streams read. ARGV: mode, max value bytes, max fields, budget, then
#   'group': group, consumer, COUNT per stream, the id to read from per stream ('>' or history);
#   'ids': per stream, how many ids then the ids (entries delivered to this consumer before).
# Returns, per stream in KEYS order, its entries shaped (see _SHAPE).
READ_LUA = (
    _SHAPE
    + """
local out = {}
for k = 1, #KEYS do out[k] = {} end
if ARGV[1] == 'group' then
  local args = {'XREADGROUP', 'GROUP', ARGV[5], ARGV[6], 'COUNT', ARGV[7], 'STREAMS'}
  for k = 1, #KEYS do args[#args + 1] = KEYS[k] end
  for k = 1, #KEYS do args[#args + 1] = ARGV[7 + k] end
  local res = redis.call(unpack(args))
  if res then
    local index = {}
    for k = 1, #KEYS do index[KEYS[k]] = k end
    local function take(key, entries)
      local list = out[index[key]]
      for _, e in ipairs(entries) do list[#list + 1] = shape(e[1], e[2]) end
    end
    if type(res[1]) == 'string' then
      -- fakeredis (the unit tests' Redis) answers key, entries, key, entries, … unnested
      for j = 1, #res, 2 do take(res[j], res[j + 1]) end
    else
      for _, s in ipairs(res) do take(s[1], s[2]) end
    end
  end
else
  local i = 5
  for k = 1, #KEYS do
    local n = tonumber(ARGV[i])
    i = i + 1
    local list = out[k]
    for _ = 1, n do
      local id = ARGV[i]
      i = i + 1
      local r = redis.call('XRANGE', KEYS[k], id, id)
      list[#list + 1] = shape(id, r[1] and r[1][2])
    end
  end
end
return out
"""
)

# KEYS[1]: one stream. ARGV: (ignored), max value bytes, max fields, budget, group, consumer,
# min idle ms, start id, count. XAUTOCLAIM … JUSTID takes ids only and leaves their delivery
# counts as they were: each is set one higher (XCLAIM … RETRYCOUNT), as a plain claim would,
# so an entry that kills whoever reads it still reaches MAX_DELIVERIES.
# Returns {next start id, entries shaped, their delivery counts, ids whose payload is gone}.
CLAIM_LUA = (
    _SHAPE
    + """
local key, group, consumer = KEYS[1], ARGV[5], ARGV[6]
local res = redis.call('XAUTOCLAIM', key, group, consumer, ARGV[7], ARGV[8], 'COUNT', ARGV[9], 'JUSTID')
local entries, counts = {}, {}
for _, id in ipairs(res[2]) do
  local p = redis.call('XPENDING', key, group, id, id, 1)
  local c = (p[1] and tonumber(p[1][4]) or 0) + 1
  redis.call('XCLAIM', key, group, consumer, 0, id, 'RETRYCOUNT', c, 'JUSTID')
  local r = redis.call('XRANGE', key, id, id)
  entries[#entries + 1] = shape(id, r[1] and r[1][2])
  counts[#counts + 1] = c
end
return {res[1], entries, counts, res[3] or {}}
"""
)


@dataclass
class Read:
    """Entries read at once from a consume loop's streams: each entry's stream (an index
    into ``Streams.sources``), and the ids delivered but not read yet (over the budget)."""

    entries: Entries = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    deferred: dict[int, list[bytes]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __iter__(self) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
        return iter(self.entries)

    def add(self, source: int, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.entries.append((entry_id, fields))
        self.sources.append(source)

    def take(self, indexes: Sequence[int]) -> Read:
        """The entries at ``indexes``, with their sources (and none deferred)."""
        return Read([self.entries[i] for i in indexes], [self.sources[i] for i in indexes])

    def last(self) -> dict[int, bytes]:
        """The last entry id read from each stream."""
        out: dict[int, bytes] = {}
        for (entry_id, _), source in zip(self.entries, self.sources, strict=True):
            out[source] = entry_id
        return out


def per_stream(count: int, streams: int) -> int:
    """A read's COUNT for each of ``streams`` streams: its share of ``count``, at least one,
    so that a flooding strategy cannot take another's place in a batch."""
    return max(1, math.ceil(count / max(1, streams)))


def _entry(item: list[Any]) -> dict[bytes, bytes] | int:
    """One shaped entry's fields (withheld ones marked), or 0 (gone) or 1 (deferred)."""
    if len(item) == 2:
        flat = item[1]
        if isinstance(flat, int):
            return flat
        return dict(zip(flat[0::2], flat[1::2], strict=True))
    flat, held = item[1], item[2]
    fields: dict[bytes, bytes] = dict(zip(flat[0::2], flat[1::2], strict=True))
    count = 0
    for name, size in zip(held[0::2], held[1::2], strict=True):
        if name == WITHHELD_FIELDS:
            count = int(size)
        else:
            fields[name] = Withheld(int(size))
    # The marker that anything was withheld (decoding looks for withheld values only then):
    # how many fields the entry had, when there were too many (else 0).
    fields[WITHHELD_FIELDS] = Withheld(count)
    return fields


def parse(reply: list[Any]) -> Read:
    """READ_LUA's reply as a Read (gone entries get ``GONE``, deferred ones are listed)."""
    read = Read()
    entries, sources = read.entries, read.sources
    for source, items in enumerate(reply):
        for item in items:
            fields = _entry(item)
            if fields == 1:
                read.deferred.setdefault(source, []).append(item[0])
                continue
            entries.append((item[0], fields if isinstance(fields, dict) else GONE))
            sources.append(source)
    return read


def read_args(max_value: int, mode: str) -> list[Any]:
    return [mode, max_value, MAX_FIELDS, READ_BUDGET_BYTES]


@dataclass
class Claimed:
    """One XAUTOCLAIM pass over one stream: where the next starts, what was taken."""

    next_id: bytes
    read: Read
    counts: dict[bytes, int]
    gone: list[bytes]


def parse_claim(reply: list[Any], source: int) -> Claimed:
    next_id, items, counts, gone = reply
    read = Read()
    got: dict[bytes, int] = {}
    for item, count in zip(items, counts, strict=True):
        entry_id, fields = item[0], _entry(item)
        got[entry_id] = int(count)
        if fields == 1:
            read.deferred.setdefault(source, []).append(entry_id)
        else:
            read.add(source, entry_id, fields if isinstance(fields, dict) else GONE)
    return Claimed(next_id, read, got, list(gone))
