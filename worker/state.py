"""What one worker process shares between its parts (the consume loop, recovery,
control, metrics, heartbeat): settings, the Redis client, the model manager,
counters, the stop event and whether Redis answered last time. The parts take
this object, never each other."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from worker.catalog import Catalog
from worker.connection import Client
from worker.model import ModelManager

if TYPE_CHECKING:
    from worker.shadow import Shadow
from worker.protocol import Limits
from worker.settings import Settings
from worker.shards import Streams


@dataclass
class Stats:
    """Counters that a status reply, the heartbeat and the metrics read."""

    results: Counter[str] = field(default_factory=Counter)  # "ok" or the error code
    by_model: Counter[str] = field(default_factory=Counter)  # ok answers by route key (pair, or default)
    batches: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    reclaim_passes: int = 0  # reclaim passes run (each also forgets departed consumers and trims)
    failed: int = 0  # entry processings that raised (left pending for redelivery)
    redis_errors: int = 0
    spun: int = 0  # reads answered while busy-waiting (IDLE_SPIN_MS) instead of sleeping
    started_at: float = field(default_factory=time.time)

    @property
    def processed(self) -> int:
        return sum(self.results.values())


def streams_for(s: Settings, shard: int = 0) -> Streams:
    """The streams of ``shard`` (with Redis Cluster: under its hash tag; else the names as set)."""
    return Streams.of(
        shard, s.shards, s.states_stream, s.results_stream, s.dead_stream, s.reply_prefix, s.redis_cluster
    )


@dataclass
class ServerState:
    settings: Settings
    redis: Client
    models: Catalog  # a bare ModelManager is taken as the default of a catalog of its own
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Stats = field(default_factory=Stats)
    redis_up: bool = False
    shadow: Shadow | None = None  # the challengers' scorer
    published_contracts: set[str] = field(default_factory=set)  # CONTRACTS_KEY fields this worker wrote
    # This run's own id in its heartbeat: tells it from another worker of the same CONSUMER name
    # (in a container, a restarted worker has the same host name and pid 1).
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if isinstance(self.models, ModelManager):
            self.models = Catalog(self.models, self.settings)

    @property
    def consumer(self) -> str:
        return self.settings.consumer

    @cached_property
    def streams(self) -> Streams:
        """The first (unsharded: the only) shard's streams."""
        return self.served[0]

    @cached_property
    def served(self) -> list[Streams]:
        """The streams of every shard this worker serves (unsharded: one)."""
        return [streams_for(self.settings, shard) for shard in self.settings.served_shards]

    def limits(self, streams: Streams) -> Limits:
        """What decoding an entry of ``streams`` needs."""
        s = self.settings
        return Limits(
            max_field_bytes=s.max_field_bytes,
            default_stream=streams.results,
            reply_prefix=streams.reply_prefix,
            default_ttl_ms=s.state_ttl_ms,
        )

    def redis_failed(self, _exc: BaseException) -> None:
        self.stats.redis_errors += 1
        self.redis_up = False
