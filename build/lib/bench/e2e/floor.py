"""The Redis floor each figure is compared with, measured in the same run:
redis-benchmark's XADD rate, and XADD+XREAD round trips with redis-py."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from typing import Any

import numpy as np
import redis

from agent.features import STATE_DIM
from bench.e2e.result import pct
from bench.e2e.scenarios import MAX_SECONDS

# What the report shows when the floor is not measured (--no-floor).
NO_FLOOR: dict[str, Any] = {
    "redis_benchmark_xadd_per_s": None,
    "xadd_xread_round_trip_ms": {"p50": float("nan")},
}


def floor(url: str, requests: int = 200_000) -> dict[str, Any]:
    """redis-benchmark's XADD rate (50 clients), and XADD+XREAD round trips with redis-py."""
    out: dict[str, Any] = {}
    m = re.match(r"redis://(?:[^@]*@)?([^:/]+):(\d+)", url)
    rb = shutil.which("redis-benchmark")
    if rb and m:
        key = f"bench:floor:{uuid.uuid4().hex[:8]}"
        proc = subprocess.run(
            [
                *(rb, "-h", m.group(1), "-p", m.group(2), "-c", "50", "-n", str(requests), "-q"),
                *("XADD", key, "MAXLEN", "~", "100000", "*", "f", "v"),
            ],
            capture_output=True,
            text=True,
            timeout=MAX_SECONDS,
        )
        rates = re.findall(r"([\d.]+) requests per second", proc.stdout)
        out["redis_benchmark_xadd_per_s"] = float(rates[-1]) if rates else None
        with redis.Redis.from_url(url) as client:
            client.delete(key)
    else:
        out["redis_benchmark_xadd_per_s"] = None
    key = f"bench:floor:{uuid.uuid4().hex[:8]}"
    samples = []
    payload = np.zeros(STATE_DIM, "<f4").tobytes()
    last = "0-0"
    with redis.Redis.from_url(url) as client:
        try:
            for _ in range(min(3000, requests)):
                t0 = time.perf_counter_ns()
                client.xadd(key, {"state_f32": payload})
                resp = client.xread({key: last}, count=1)
                samples.append((time.perf_counter_ns() - t0) / 1e6)
                last = resp[0][1][-1][0]
        finally:
            client.delete(key)
    out["xadd_xread_round_trip_ms"] = pct(samples[len(samples) // 6 :])  # after a warm-up
    return out
