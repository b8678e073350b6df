"""Sharding across a Redis Cluster: which shard a pair's states go to, and the
key names of a shard. Every key of one shard carries the same hash tag, so one
shard's streams (states, results, dead letters, reply streams) share a slot
and its atomic publish+ack can run as one script call. Imports no torch: the
client uses it too.

- A pair's shard: ``zlib.crc32(pair) % shards`` (a state without a pair: shard 0).
- A shard's tag: ``str(s)`` when Redis Cluster's key slot of it (CRC16 mod
  16384) falls in the shard's share of the slot range, ``[s, s+1) * 16384 /
  shards``, else ``f"{s}-{k}"`` for the smallest k ≥ 1 that does. The shards'
  tags are thus spread evenly over the slot range, and so over the primaries
  of a cluster whose slots are split evenly (``redis-cli --cluster create``).
- A shard's key: the tag goes after the first ``:`` of the name:
  ``statpair:states`` → ``statpair:{2}:states``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

MAX_SHARDS = 1024


def shard_of(pair: str | None, shards: int) -> int:
    """The shard a pair's states go to (stable across processes and versions)."""
    if shards <= 1 or not pair:
        return 0
    return zlib.crc32(pair.encode()) % shards


@cache
def shard_tag(shard: int, shards: int) -> str:
    """The hash tag of ``shard`` of ``shards`` (see the module docstring)."""
    if not 0 <= shard < shards <= MAX_SHARDS:
        raise ValueError(f"shard {shard} of {shards}: need 0 <= shard < shards <= {MAX_SHARDS}")
    for k in range(100_000):  # ~shards tries on average: CRC16 spreads the candidates
        tag = str(shard) if k == 0 else f"{shard}-{k}"
        if key_slot(tag.encode()) * shards // REDIS_CLUSTER_HASH_SLOTS == shard:
            return tag
    raise AssertionError("unreachable: CRC16 covers every share of the slot range")


def tagged(name: str, tag: str) -> str:
    """``statpair:states`` with tag ``2`` → ``statpair:{2}:states``."""
    head, sep, rest = name.partition(":")
    return f"{head}:{{{tag}}}:{rest}" if sep else f"{{{tag}}}:{name}"


@dataclass(frozen=True)
class Streams:
    """The streams one consume loop works on: its input stream, where results and
    dead letters go, the prefix a client's reply stream must carry; for a shard,
    all under the shard's tag (unsharded: the configured names as they are)."""

    shard: int
    states: str
    results: str
    dead: str
    reply_prefix: str

    @classmethod
    def of(
        cls, shard: int, shards: int, states: str, results: str, dead: str, reply_prefix: str, sharded: bool
    ) -> Streams:
        if not sharded:
            return cls(0, states, results, dead, reply_prefix)
        tag = shard_tag(shard, shards)
        return cls(
            shard, tagged(states, tag), tagged(results, tag), tagged(dead, tag), tagged(reply_prefix, tag)
        )
