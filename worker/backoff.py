"""Waiting between retries: exponential backoff with full jitter, and a pause
that ends early when the worker is asked to stop."""

from __future__ import annotations

import asyncio
import random


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
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
