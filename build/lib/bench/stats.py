"""Percentile summaries shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """n, mean, p50, p95, p99 and max of ``values``, in their own unit."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "p50": nan, "p95": nan, "p99": nan, "max": nan}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(a.max()),
    }


def summarize_us(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """``percentiles`` in microseconds of timings given in nanoseconds."""
    return percentiles(np.asarray(samples_ns, dtype=np.float64) / 1e3)
