"""Percentile summaries shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summarize_us(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """mean/p50/p95/p99/max in microseconds of timings given in nanoseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    if a.size == 0:
        return {"n": 0, "mean": float("nan"), "p50": float("nan"), "p95": float("nan"),
                "p99": float("nan"), "max": float("nan")}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(p50), "p95": float(p95),
            "p99": float(p99), "max": float(a.max())}
