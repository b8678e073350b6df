"""Refuse a Redis that may evict: under an evicting ``maxmemory-policy`` (allkeys-*,
volatile-*) Redis removes keys when full, the states stream with its pending entries
among them, results, reply streams, heartbeats and the contracts hash: states lost, or
answered twice. Checked at start and after every reconnection (the policy may have been
changed meanwhile), on every primary of a cluster; ALLOW_EVICTION=1 serves anyway."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from worker.settings import ConfigError
from worker.state import ServerState

logger = logging.getLogger(__name__)

SAFE = "noeviction"


async def policies(state: ServerState) -> dict[str, str]:
    """Each server's maxmemory-policy (INFO memory), by node name (one Redis: "")."""
    redis = state.redis
    if isinstance(redis, RedisCluster):
        found: dict[str, Any] = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return {str(node): str(info.get("maxmemory_policy", SAFE)) for node, info in found.items()}
    info = await redis.info("memory")
    return {"": str(info.get("maxmemory_policy", SAFE))}


async def check_eviction(state: ServerState) -> None:
    """ConfigError (one sentence, exit 2) when a server may evict and ALLOW_EVICTION is off;
    a warning when the worker may not read the policy (its ACL lacks +info)."""
    s = state.settings
    try:
        found = await policies(state)
    except ResponseError as exc:
        if "unknown command" in str(exc):  # a server without INFO (fakeredis): nothing to check
            logger.debug("maxmemory-policy not checked: %s", exc)
            return
        if "NOPERM" not in str(exc) and not isinstance(exc, NoPermissionError):
            raise
        if not state.eviction_unknown_said:
            state.eviction_unknown_said = True
            logger.warning(
                "cannot read Redis's maxmemory-policy (%s): an evicting policy would lose states; "
                "give the worker's ACL user +info to have it checked",
                exc,
            )
        return
    evicting = {node: policy for node, policy in found.items() if policy != SAFE}
    if not evicting:
        return
    where = ", ".join(f"{node} has {policy}" if node else policy for node, policy in evicting.items())
    if s.allow_eviction:
        if not state.eviction_said:
            state.eviction_said = True
            logger.warning(
                "Redis may evict keys (maxmemory-policy %s) and ALLOW_EVICTION=1: a full Redis can "
                "drop queued states, pending entries and results",
                where,
            )
        return
    raise ConfigError(
        f"Redis at {s.redis_url_masked} may evict keys (maxmemory-policy {where}): when full it would "
        "drop queued states, pending entries and results. Set maxmemory-policy noeviction (a full "
        "Redis is then waited out), or ALLOW_EVICTION=1 to serve anyway"
    )
