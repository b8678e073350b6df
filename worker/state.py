"""What one worker process shares between its parts (the consume loop, recovery,
control, metrics, heartbeat): settings, the Redis client, the model manager,
counters, the stop event and whether Redis answered last time. The parts take
this object, never each other."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

from redis.asyncio import Redis

from worker.model import ModelManager
from worker.protocol import Limits
from worker.settings import Settings


@dataclass
class Stats:
    """Counters that a status reply, the heartbeat and the metrics read."""

    results: Counter[str] = field(default_factory=Counter)  # "ok" or the error code
    batches: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    failed: int = 0  # entry processings that raised (left pending for redelivery)
    redis_errors: int = 0
    spun: int = 0  # reads answered while busy-waiting (IDLE_SPIN_MS) instead of sleeping
    started_at: float = field(default_factory=time.time)

    @property
    def processed(self) -> int:
        return sum(self.results.values())


@dataclass(frozen=True)
class Streams:
    """The keys one consume loop works on: its input stream, where results and
    dead letters go, and the prefix a client's own reply stream must carry."""

    states: str
    results: str
    dead: str
    reply_prefix: str

    @classmethod
    def from_settings(cls, s: Settings) -> Streams:
        return cls(s.states_stream, s.results_stream, s.dead_stream, s.reply_prefix)


@dataclass
class ServerState:
    settings: Settings
    redis: Redis
    models: ModelManager
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Stats = field(default_factory=Stats)
    redis_up: bool = False

    @property
    def consumer(self) -> str:
        return self.settings.consumer

    @cached_property
    def streams(self) -> Streams:
        return Streams.from_settings(self.settings)

    @cached_property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(
            max_field_bytes=s.max_field_bytes,
            default_stream=self.streams.results,
            reply_prefix=self.streams.reply_prefix,
            default_ttl_ms=s.state_ttl_ms,
        )

    def redis_failed(self, _exc: BaseException) -> None:
        self.stats.redis_errors += 1
        self.redis_up = False
