"""The live side of a replay: a strategy's loop over a price file's held-out rows,
through ``PriceClient`` and one worker over Redis, each tick timed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from agent.contract import PairContract
from bench.e2e.workers import Keys
from worker.client import ActionClient, ActionError
from worker.prices import ContractUnavailable, PriceClient

CONTRACT_SECONDS = 30.0  # the worker publishes its contract just after its first heartbeat
POLL_SECONDS = 0.05


class ReplayError(RuntimeError):
    """The live side could not finish: no contract, an error answer, no answer, too slow."""


@dataclass
class Live:
    """What the strategy saw, one entry per tick (one tick per held-out row)."""

    contract: PairContract | None = None  # as the worker published it and the client used it
    actions: list[float] = field(default_factory=list)
    discrete: list[int] = field(default_factory=list)
    positions: list[float] = field(default_factory=list)  # tracked by the client after the tick
    spreads: list[float] = field(default_factory=list)  # the served contract's spread of the tick
    round_trip_ms: list[float] = field(default_factory=list)  # PriceClient.tick, wall clock
    worker_ms: list[float] = field(default_factory=list)  # the worker's own latency_ms
    model_sha256: set[str] = field(default_factory=set)
    backends: set[str] = field(default_factory=set)
    warmed: int = 0  # rows fed before the first tick
    error: str | None = None  # why the replay stopped early


async def wait_contract(prices: PriceClient, pair: str, seconds: float = CONTRACT_SECONDS) -> PairContract:
    """The served contract, polled until the worker has published it (bounded)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await prices.fetch_contract(pair)
        except ContractUnavailable:
            if time.monotonic() > deadline:
                raise ReplayError(
                    f"the worker published no contract in {prices.contracts_key} within {seconds:.0f} s"
                ) from None
            await asyncio.sleep(POLL_SECONDS)


async def stream(
    url: str,
    keys: Keys,
    pair: str,
    a: np.ndarray,
    b: np.ndarray,
    rows: tuple[int, int],
    *,
    timeout: float = 5.0,
    max_seconds: float = 600.0,
) -> Live:
    """Warm a ``PriceClient`` with every row before ``rows`` (held flat), then tick
    each row of ``rows`` in order, the position following the returned actions.
    Stops early (``Live.error`` says why) on an error answer, no answer within
    ``timeout``, or after ``max_seconds``."""
    start, stop = rows
    live = Live()
    clock = time.perf_counter_ns
    async with ActionClient(
        url, states_stream=keys.states, reply_prefix=f"{keys.actions}:", timeout=timeout
    ) as client:
        prices = PriceClient(client, contracts_key=keys.contracts)
        await wait_contract(prices, pair)
        await prices.warm(pair, a[:start], b[:start])
        live.warmed = start
        served = live.contract = prices.contract(pair)
        assert served is not None  # warm made the pair's book, with the contract it fetched
        deadline = time.monotonic() + max_seconds
        av, bv = a.tolist(), b.tolist()
        for i in range(start, stop):
            if time.monotonic() > deadline:
                live.error = f"cut short after {max_seconds:g} s: {i - start} of {stop - start} rows replayed"
                break
            try:
                t0 = clock()
                result = await prices.tick(pair, av[i], bv[i])
                live.round_trip_ms.append((clock() - t0) / 1e6)
            except ActionError as exc:
                live.error = f"row {i}: the worker answered {exc}"
                break
            except TimeoutError:
                live.error = f"row {i}: no answer from the worker within {timeout:g} s"
                break
            if result is None or result.action is None:
                live.error = f"row {i}: no action (the client was not warmed up: {start} rows of history)"
                break
            live.actions.append(result.action)
            live.discrete.append(0 if result.discrete is None else result.discrete)
            live.positions.append(prices.position(pair))
            live.spreads.append(served.spread.value(av[i], bv[i]))
            if result.latency_ms is not None:
                live.worker_ms.append(result.latency_ms)
            if result.model_sha256:
                live.model_sha256.add(result.model_sha256)
            if result.backend:
                live.backends.add(result.backend)
        if prices.rebuilds:  # the served contract changed mid-replay: the features were rebuilt
            live.error = live.error or f"the served contract changed {prices.rebuilds} time(s) mid-replay"
    return live
