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

import re
import zlib
from collections.abc import Sequence
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


STRATEGY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def strategy_keys(states: str, reply_prefix: str, strategy: str) -> tuple[str, str, str]:
    """A strategy's own states stream, reply prefix and default result stream (before any
    shard tag): ``statpair:states:<strategy>``, ``statpair:actions:<strategy>:`` and
    ``statpair:actions:<strategy>:results``. An ACL user per strategy may write only the
    first and read and delete only under the second (docs/operations.md)."""
    if not STRATEGY_NAME.fullmatch(strategy):
        raise ValueError(
            f"strategy name {strategy!r} must be 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    prefix = f"{reply_prefix}{strategy}:"
    return f"{states}:{strategy}", prefix, f"{prefix}results"


@dataclass(frozen=True)
class Source:
    """One stream a consume loop reads states from, where their answers go by default and
    the prefix a ``reply_to`` from it must carry: the shared stream (any client) or one
    strategy's own."""

    states: str
    results: str
    reply_prefix: str
    strategy: str | None = None


@dataclass(frozen=True)
class Streams:
    """The streams one consume loop works on: the streams it reads (``sources``: the shared
    states stream first, then each strategy's), where results and dead letters go, the
    prefix a client's reply stream must carry; for a shard, all under the shard's tag
    (unsharded: the configured names as they are)."""

    shard: int
    states: str
    results: str
    dead: str
    reply_prefix: str
    sources: tuple[Source, ...] = ()

    def __post_init__(self) -> None:
        if not self.sources:
            object.__setattr__(self, "sources", (Source(self.states, self.results, self.reply_prefix),))

    @classmethod
    def of(
        cls,
        shard: int,
        shards: int,
        states: str,
        results: str,
        dead: str,
        reply_prefix: str,
        sharded: bool,
        strategies: Sequence[str] = (),
    ) -> Streams:
        tag = shard_tag(shard, shards) if sharded else None

        def key(name: str) -> str:
            return name if tag is None else tagged(name, tag)

        sources = [Source(key(states), key(results), key(reply_prefix))]
        for strategy in strategies:
            own_states, own_prefix, own_results = strategy_keys(states, reply_prefix, strategy)
            sources.append(Source(key(own_states), key(own_results), key(own_prefix), strategy))
        return cls(
            shard if sharded else 0,
            key(states),
            key(results),
            key(dead),
            key(reply_prefix),
            tuple(sources),
        )
