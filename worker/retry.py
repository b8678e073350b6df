"""Retrying Redis calls: the set of transient errors, exponential backoff with
full jitter, a pause that ends early on stop, and ``retrying``, the one retry
loop that the consume loop, the control reader, the heartbeat and the client use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import AuthenticationError, ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.connection import ReplyTooLarge

logger = logging.getLogger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    # Redis Cluster during a failover: a slot without a primary for a second or two.
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    # A read past the bound (worker/connection.py): the connection was dropped; what the read
    # delivered is pending, and the next read of it is bounded.
    ReplyTooLarge,
)
"""Errors that a retry can cure: the connection, not the command, failed."""

T = TypeVar("T")


class Backoff:
    """Exponential backoff with full jitter, reset after a success."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        self.attempt += 1
        return random.uniform(self.base, min(self.cap, self.base * 2**self.attempt))

    def reset(self) -> None:
        self.attempt = 0


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def retrying(
    op: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    what: str,
    *,
    backoff: Backoff | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    loud: bool = True,
) -> T | None:
    """Run ``op`` until it succeeds (its result) or ``stop`` is set (None).

    A transient error is retried after a backoff pause (wrong credentials are not
    transient, though redis-py's AuthenticationError is a ConnectionError), with one log line per
    retry: a warning when ``loud``, else a debug line (a worker's other Redis
    loops stay quiet so an outage is reported once per retry, by the consume
    loop). Any other error propagates. ``backoff`` may be shared across calls
    so that consecutive failures keep growing the delay."""
    backoff = backoff or Backoff()
    level = logging.WARNING if loud else logging.DEBUG
    while not stop.is_set():
        try:
            result = await op()
        except AuthenticationError:
            raise  # a ConnectionError, but no retry cures wrong credentials: the caller says so
        except TRANSIENT as exc:
            if on_error is not None:
                on_error(exc)
            delay = backoff.next_delay()
            logger.log(
                level,
                "Redis unavailable while %s (%s: %s); retry %d in %.2f s",
                what,
                type(exc).__name__,
                exc,
                backoff.attempt,
                delay,
            )
            await pause(stop, delay)
            continue
        if backoff.attempt:
            logger.log(level, "Redis reachable again after %d failed attempt(s)", backoff.attempt)
        backoff.reset()
        return result
    return None
