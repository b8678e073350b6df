"""Benchmark of the streaming feature builder: µs per tick, after warm-up, on a
synthetic price path (pure Python, one core); back to back, or paced with an
idle gap before each tick, as a live strategy's ticks arrive."""

from __future__ import annotations

import math
import time

import numpy as np

from agent.contract import PairContract
from agent.streaming import FeatureBuilder


def bench_features(
    ticks: int = 20_000, warmup: int = 200, seed: int = 0, gap_s: float = 0.0
) -> dict[str, float]:
    """Time ``FeatureBuilder.update`` over ``ticks`` ticks after ``warmup`` untimed ones.

    Returns p50, p95, p99 and mean µs per update, and the tick count. The
    position changes now and then, so the position book is exercised too.
    ``gap_s`` > 0 sleeps that long before each timed tick: back to back, the
    update runs with its code and data in the CPU's caches; after an idle gap
    (a live feed, other processes on the core) it runs cold, and costs more."""
    if ticks < 1 or warmup < 0 or gap_s < 0:
        raise ValueError("need ticks >= 1, warmup >= 0 and gap_s >= 0")
    rng = np.random.default_rng(seed)
    n = warmup + ticks
    log_b = math.log(100.0) + np.cumsum(rng.normal(0.0, 0.012, n))
    spread = np.zeros(n)
    for t in range(1, n):  # a mean-reverting spread, half-life about 12 ticks
        spread[t] = 0.944 * spread[t - 1] + 0.01 * rng.standard_normal()
    a, b = np.exp(log_b + spread + math.log(50.0)).tolist(), np.exp(log_b).tolist()
    positions = np.clip(np.round(rng.normal(0.0, 0.7, n), 1), -1.0, 1.0).tolist()
    contract = PairContract.synthetic(
        hedge_ratio=1.0,
        intercept=math.log(50.0),
        cost=0.0005,
        half_life=12.0,
        sigma=0.01,
        regime_prob=0.0,
        regime_mean_jump=0.0,
        market_sigma=0.012,
    )
    builder = FeatureBuilder(contract)
    builder.warm(a[:warmup], b[:warmup], positions[:warmup])
    update, clock, sleep = builder.update, time.perf_counter_ns, time.sleep
    timings = np.empty(ticks)
    for k in range(ticks):
        i = warmup + k
        if gap_s:
            sleep(gap_s)
        t0 = clock()
        update(a[i], b[i], positions[i])
        timings[k] = clock() - t0
    us = timings / 1000.0
    p50, p95, p99 = np.percentile(us, [50, 95, 99])
    return {
        "ticks": float(ticks),
        "p50_us": float(p50),
        "p95_us": float(p95),
        "p99_us": float(p99),
        "mean_us": float(us.mean()),
    }
