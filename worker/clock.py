"""Redis's clock, as the worker reads it: a state's age is measured against the time of
the Redis that stamped its entry id (the id's milliseconds are that server's time at
XADD), not against this host's clock, so a worker whose clock is ahead does not expire
fresh states and one behind does not serve stale ones. The offset to Redis ``TIME`` is
measured at start, after a reconnection and at each reclaim pass (one round trip, its
midpoint taken as the moment Redis read its clock)."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio.cluster import RedisCluster


class RedisClock:
    """This host's clock plus the offset measured to one Redis server's."""

    def __init__(self) -> None:
        self.offset_ms = 0.0  # Redis's time minus this host's, at the last sync
        self.synced = False

    async def sync(self, redis: Any, key: str) -> None:
        """Measure the offset to the server holding ``key`` (on a cluster: its node)."""
        before = time.time()
        if isinstance(redis, RedisCluster):
            sec, usec = await redis.execute_command("TIME", target_nodes=redis.get_node_from_key(key))
        else:
            sec, usec = await redis.time()
        after = time.time()
        self.offset_ms = int(sec) * 1000.0 + int(usec) / 1000.0 - (before + after) * 500.0
        self.synced = True

    def now_ms(self) -> float:
        """Redis's time now, in milliseconds since the epoch (as entry ids count them)."""
        return time.time() * 1000.0 + self.offset_ms
