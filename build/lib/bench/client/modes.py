"""What each measured call does: the raw redis-py loop (XADD, then XREAD BLOCK on
its own reply stream), ``act``, ``act_many(n)`` and ``PriceClient.tick``. A mode's
``once`` is the timed call; ``answers`` reads what it returned, untimed."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from redis.asyncio import Redis

from agent.env import PairConfig, synthetic_prices
from worker.client import ActionClient, ActionError
from worker.prices import PriceClient
from worker.protocol import Result

Answer = tuple[int, float]  # (the worker's batch_size, its latency_ms) of one answered state
PRICE_PAIR = "SYN-A/SYN-B"  # a synthetic pair: its prices come from the generator, not a market
READ_SECONDS = 5.0  # the most one answer is waited for


class Raw:
    """The baseline: what a strategy writes with redis-py alone. One state: XADD,
    then XREAD BLOCK on its own reply stream. ``n`` states (``raw_many(n)``): one
    MULTI/EXEC pipeline of ``n`` XADDs, then XREAD BLOCK until all ``n`` are answered."""

    def __init__(
        self, redis: Redis, states_stream: str, reply_stream: str, states: Sequence[np.ndarray], n: int = 1
    ) -> None:
        self.redis, self.states_stream, self.reply, self.n = redis, states_stream, reply_stream, n
        self.name = "raw" if n == 1 else f"raw_many({n})"
        self.payloads = [np.asarray(s, "<f4").tobytes() for s in states]
        self._n = itertools.count()
        self._last: bytes | str = "0-0"

    async def once(self) -> list[dict[bytes, bytes]]:
        call = next(self._n)
        cids = [f"raw-{call}-{k}".encode() for k in range(self.n)]
        entries: list[Any] = [
            {"id": cid, "reply_to": self.reply, "state_f32": self.payloads[(call + k) % len(self.payloads)]}
            for k, cid in enumerate(cids)
        ]
        if self.n == 1:
            await self.redis.xadd(self.states_stream, entries[0])
        else:
            pipe = self.redis.pipeline(transaction=True)
            for fields in entries:
                pipe.xadd(self.states_stream, fields)
            await pipe.execute()
        wanted, got = set(cids), list[dict[bytes, bytes]]()
        deadline = time.monotonic() + READ_SECONDS
        while len(got) < self.n and time.monotonic() < deadline:
            resp: Any = await self.redis.xread({self.reply: self._last}, count=1000, block=1000)
            for eid, fields in resp[0][1] if resp else []:
                self._last = eid
                if fields[b"id"] in wanted:
                    got.append(fields)
        if len(got) < self.n:
            raise TimeoutError(f"{self.name}: {self.n - len(got)} answers missing after {READ_SECONDS:.0f} s")
        return got

    @staticmethod
    def answers(out: list[dict[bytes, bytes]]) -> list[Answer]:
        for fields in out:
            if fields[b"status"] != b"ok":
                raise RuntimeError(f"raw loop: the worker answered {fields!r}")
        return [(int(f[b"batch_size"]), float(f[b"latency_ms"])) for f in out]


class Act:
    """``ActionClient.act``: one state, one answer."""

    name = "act"

    def __init__(self, client: ActionClient, states: Sequence[np.ndarray]) -> None:
        self.client, self.states = client, list(states)
        self._n = itertools.count()

    async def once(self) -> Result:
        return await self.client.act(self.states[next(self._n) % len(self.states)])

    @staticmethod
    def answers(out: Result) -> list[Answer]:
        return [_answer(out)]


class Many:
    """``ActionClient.act_many`` of ``n`` states: one MULTI/EXEC, so one read by the worker."""

    def __init__(self, client: ActionClient, states: Sequence[np.ndarray], n: int) -> None:
        self.client, self.n = client, n
        self.name = f"act_many({n})"
        pool = list(states)
        self.batches = [np.stack([pool[(i + k) % len(pool)] for k in range(n)]) for i in range(len(pool))]
        self._n = itertools.count()

    async def once(self) -> list[Result | ActionError]:
        return await self.client.act_many(self.batches[next(self._n) % len(self.batches)])

    @staticmethod
    def answers(out: list[Result | ActionError]) -> list[Answer]:
        return [_answer(r) for r in out]


class Price:
    """``PriceClient.tick`` over the same ``ActionClient``: a synthetic pair's
    prices in, actions out; warmed from a history first, so every tick acts."""

    name = "price"

    def __init__(self, client: ActionClient, contracts_key: str, ticks: int, seed: int = 0) -> None:
        self.prices = PriceClient(client, contracts_key=contracts_key)
        self.history = self.prices.needed(PRICE_PAIR) - 1  # ticks fed by ``warm``, untimed
        a, b = synthetic_prices(PairConfig(), np.random.default_rng(seed), self.history + ticks)
        self.a, self.b = a.tolist(), b.tolist()
        self._n = itertools.count(self.history)

    async def warm(self) -> None:
        """Feed the history the builder needs (held flat), so that the next tick acts."""
        left = await self.prices.warm(PRICE_PAIR, self.a[: self.history], self.b[: self.history])
        if left != 1:
            raise RuntimeError(f"the price client needs {left} more ticks after its warm-up, not 1")

    async def once(self) -> Result | None:
        i = next(self._n)
        if i >= len(self.a):
            raise IndexError(f"the synthetic price path has {len(self.a)} ticks, tick {i + 1} was asked for")
        return await self.prices.tick(PRICE_PAIR, self.a[i], self.b[i])

    @staticmethod
    def answers(out: Result | None) -> list[Answer]:
        if out is None:
            raise RuntimeError("the price client answered None: it was not warmed up")
        return [_answer(out)]


def _answer(r: Result | ActionError) -> Answer:
    if isinstance(r, ActionError):
        raise r
    return (r.batch_size or 0, float("nan") if r.latency_ms is None else r.latency_ms)
