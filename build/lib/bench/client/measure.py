"""The run: every mode on one event loop, its calls split in rounds, each round
running every mode in a shuffled order, so that host noise hits all modes alike
and no mode always follows the same one (a call runs slower after one that
churned the caches); then each mode's figures and the ratios the targets are set on."""

from __future__ import annotations

import gc
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from redis.asyncio import Redis

from agent.features import STATE_DIM
from bench.client.modes import Act, Answer, Many, Price, Raw
from bench.e2e.workers import Keys
from bench.stats import percentiles
from worker.client import ActionClient

# Issue 13's targets, on p50s measured in the same run.
ACT_OVER_RAW = 1.2
MANY_OVER_ACT = 1.5
PRICE_MINUS_ACT_US = 50.0


class Mode(Protocol):
    name: str

    async def once(self) -> Any: ...

    def answers(self, out: Any) -> list[Answer]: ...


@dataclass(frozen=True)
class Plan:
    """How much is measured: ``count`` timed calls per mode in ``rounds`` rounds
    (None: one call per mode per round, the finest interleaving), after ``warmup``
    untimed ones, stopping early (and saying so) after ``max_seconds``."""

    count: int = 2000
    rounds: int | None = None
    warmup: int = 200
    many: tuple[int, ...] = (4, 16, 64)
    max_seconds: float = 300.0
    seed: int = 0

    def per_round(self) -> list[int]:
        rounds = self.count if self.rounds is None else max(1, min(self.rounds, self.count))
        return [self.count // rounds + (1 if r < self.count % rounds else 0) for r in range(rounds)]


async def measure(url: str, keys: Keys, plan: Plan) -> dict[str, Any]:
    """Every mode's figures (``modes``), the ratios, and whether the run was cut short."""
    rng = np.random.default_rng(plan.seed)
    states = [rng.standard_normal(STATE_DIM).astype(np.float32) for _ in range(64)]
    raw_redis = Redis.from_url(url)
    try:
        async with ActionClient(url, states_stream=keys.states, reply_prefix=f"{keys.actions}:") as client:
            price = Price(client, keys.contracts, plan.warmup + plan.count, plan.seed)
            modes: list[Mode] = [
                Raw(raw_redis, keys.states, f"{keys.actions}:raw", states),
                Act(client, states),
            ]
            for n in plan.many:
                modes.append(Raw(raw_redis, keys.states, f"{keys.actions}:raw{n}", states, n))
                modes.append(Many(client, states, n))
            modes.append(price)
            await price.warm()
            for mode in modes:  # connections, the reader task, the worker's first batches
                for _ in range(plan.warmup):
                    mode.answers(await mode.once())
            figures, cut_short = await _rounds(modes, plan)
    finally:
        await raw_redis.aclose()
    return {"modes": figures, "ratios": ratios(figures, plan.many), "cut_short": cut_short}


async def _rounds(modes: list[Mode], plan: Plan) -> tuple[dict[str, dict[str, Any]], bool]:
    ns: dict[str, list[int]] = {m.name: [] for m in modes}
    cpu_ns = dict.fromkeys(ns, 0)
    got: dict[str, list[Answer]] = {m.name: [] for m in modes}
    batches: dict[str, Counter[tuple[int, ...]]] = {m.name: Counter() for m in modes}
    clock, cpu = time.perf_counter_ns, time.process_time_ns
    deadline = time.monotonic() + plan.max_seconds
    cut_short = False
    shuffler = random.Random(plan.seed)
    order = list(modes)
    gc.collect()
    gc.freeze()  # the set-up's objects: a full collection would not walk them mid-run
    for n in plan.per_round():
        if time.monotonic() > deadline:
            cut_short = True
            break
        shuffler.shuffle(order)
        for mode in order:
            outs, times = [], ns[mode.name]
            c0 = cpu()
            for _ in range(n):
                t0 = clock()
                out = await mode.once()
                times.append(clock() - t0)
                outs.append(out)
            cpu_ns[mode.name] += cpu() - c0
            for out in outs:  # untimed
                answers = mode.answers(out)
                got[mode.name] += answers
                batches[mode.name][tuple(sorted({b for b, _ in answers}))] += 1
    gc.unfreeze()
    figures = {}
    for mode in modes:
        calls = len(ns[mode.name])
        states = max(1, len(got[mode.name]) // max(1, calls))
        one_read = batches[mode.name][(states,)]
        figures[mode.name] = {
            "calls": calls,
            "states_per_call": states,
            "round_trip_ms": percentiles(np.asarray(ns[mode.name], dtype=np.float64) / 1e6),
            "client_cpu_us_per_call": cpu_ns[mode.name] / 1e3 / calls if calls else float("nan"),
            "worker_latency_ms": percentiles([lat for _, lat in got[mode.name]]),
            # A call's answers all carrying batch_size == its states: they were one read.
            "one_read_calls": one_read,
            "batch_sizes": {",".join(map(str, k)): v for k, v in sorted(batches[mode.name].items())},
        }
    return figures, cut_short


def ratios(figures: dict[str, dict[str, Any]], many: tuple[int, ...]) -> dict[str, Any]:
    """The targets' figures, each with its target and whether it was met."""

    def p50(name: str) -> float:
        return float(figures[name]["round_trip_ms"]["p50"])

    out: dict[str, Any] = {
        "act_over_raw_p50": _check(p50("act") / p50("raw"), ACT_OVER_RAW),
        "price_minus_act_p50_us": _check((p50("price") - p50("act")) * 1e3, PRICE_MINUS_ACT_US),
        "price_minus_act_cpu_us": (
            figures["price"]["client_cpu_us_per_call"] - figures["act"]["client_cpu_us_per_call"]
        ),
        "act_minus_raw_cpu_us": (
            figures["act"]["client_cpu_us_per_call"] - figures["raw"]["client_cpu_us_per_call"]
        ),
    }
    for n in many:
        out[f"act_many({n})_over_act_p50"] = _check(p50(f"act_many({n})") / p50("act"), MANY_OVER_ACT)
        # No target: what n states cost without the client (its floor), and the client's share.
        out[f"raw_many({n})_over_act_p50"] = p50(f"raw_many({n})") / p50("act")
        out[f"act_many({n})_over_raw_many({n})_p50"] = p50(f"act_many({n})") / p50(f"raw_many({n})")
    return out


def _check(value: float, target: float) -> dict[str, Any]:
    return {"value": value, "target": target, "met": bool(value <= target)}
