"""What one worker process shares between its parts (the consume loop, recovery,
control, metrics, heartbeat): settings, the Redis client, the model manager,
counters, the stop event and whether Redis answered last time. The parts take
this object, never each other."""

from __future__ import annotations

import asyncio
import logging
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

logger = logging.getLogger(__name__)


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
    writes_refused: int = 0  # answers Redis refused to write (left pending, retried later)
    spun: int = 0  # reads answered while busy-waiting (IDLE_SPIN_MS) instead of sleeping
    started_at: float = field(default_factory=time.time)

    @property
    def processed(self) -> int:
        return sum(self.results.values())


def streams_for(s: Settings, shard: int = 0) -> Streams:
    """The streams of ``shard`` (with Redis Cluster: under its hash tag; else the names as set)."""
    return Streams.of(
        shard,
        s.shards,
        s.states_stream,
        s.results_stream,
        s.dead_stream,
        s.reply_prefix,
        s.redis_cluster,
        s.strategy_names,
    )


@dataclass
class Refusal:
    """An episode of refused writes on one shard: why, since when, whether its loop waits."""

    why: str
    since: float
    waiting: bool = True
    resumes: int = 0


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
    # Why Redis refuses writes (OOM, READONLY, …), by shard (0 unsharded), and since when
    # (monotonic): that shard's consume loop reads no new states, and waits for writes.
    refusals: dict[int, Refusal] = field(default_factory=dict)
    # Every reply on the worker's connections is bounded (MAX_REPLY_BYTES, worker/connection.py):
    # new states are read with plain XREADGROUP; else through the bounded reading script.
    replies_bounded: bool = False
    eviction_said: bool = False  # ALLOW_EVICTION=1 on an evicting Redis: warned once
    # Pair labels the live workers of this stream answer with different models, and each
    # worker's model for them (worker/heartbeat.py): a mixed fleet, said once a change.
    fleet_divergent: dict[str, dict[str, str]] = field(default_factory=dict)
    eviction_unknown_said: bool = False  # the policy could not be read (ACL): warned once
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

    def limits(self, streams: Streams) -> list[Limits]:
        """What decoding an entry needs, for each of the streams' sources (in order): its
        default result stream and the prefix its reply streams must carry (the shared
        stream's may not name a strategy's)."""
        s = self.settings
        owned = tuple(src.reply_prefix for src in streams.sources if src.strategy is not None)
        return [
            Limits(
                max_field_bytes=s.max_field_bytes,
                default_stream=src.results,
                reply_prefix=src.reply_prefix,
                default_ttl_ms=s.state_ttl_ms,
                forbidden_prefixes=() if src.strategy is not None else owned,
            )
            for src in streams.sources
        ]

    def redis_failed(self, _exc: BaseException) -> None:
        self.stats.redis_errors += 1
        self.redis_up = False

    @property
    def refusal(self) -> str | None:
        """Why Redis refuses writes (the first shard's reason), or None when it takes them."""
        return next(iter(self.refusals.values())).why if self.refusals else None

    def refused(self, shard: int) -> bool:
        """Whether the shard's consume loop must wait for writes before reading again."""
        refusal = self.refusals.get(shard)
        return refusal is not None and refusal.waiting

    def writes_refused(self, error: str, pending: int, shard: int = 0) -> None:
        """Redis refused to write ``pending`` answers (``error``): said once per episode,
        until an answer is written again; the shard's consume loop stops reading new states."""
        self.stats.writes_refused += pending
        why = error.splitlines()[0][:200]
        refusal = self.refusals.get(shard)
        if refusal is not None:  # the same episode: a write probe passed, the answers did not
            refusal.waiting, refusal.why = True, why
            return
        where = f" on shard {shard}" if self.settings.redis_cluster else ""
        logger.error(
            "Redis refuses writes%s (%s): %d answer%s left pending, not acknowledged; reading no "
            "new states until it takes writes again",
            where,
            why,
            pending,
            "" if pending == 1 else "s",
        )
        self.refusals[shard] = Refusal(why, time.monotonic())

    def writes_probed(self, shard: int = 0) -> bool:
        """A write probe passed: the loop answers what it left pending. True the first time
        in the episode (the next refusal is the same episode until an answer is written)."""
        refusal = self.refusals.get(shard)
        if refusal is None:
            return False
        refusal.waiting = False
        refusal.resumes += 1
        return refusal.resumes == 1

    def writes_accepted(self, shard: int = 0) -> None:
        """A batch's answers were all written: the episode is over (said once)."""
        refusal = self.refusals.get(shard)
        if refusal is not None and not refusal.waiting:
            del self.refusals[shard]
            logger.warning(
                "Redis takes writes again after %.1f s: the states left pending are answered",
                time.monotonic() - refusal.since,
            )
