"""What a run reports: the table, each role's CPU share, the JSON document and
the plot of latency against offered rate."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from bench.e2e.cpu import ROLES
from bench.e2e.result import Result

_NO_E2E = {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}


def table(results: list[Result], fl: dict[str, Any]) -> str:
    rb = fl.get("redis_benchmark_xadd_per_s")
    rt = fl["xadd_xread_round_trip_ms"]["p50"]
    lines = [
        f"floor: redis-benchmark XADD {rb:,.0f}/s (50 clients); XADD+XREAD round trip p50 {rt:.3f} ms"
        if rb
        else f"floor: XADD+XREAD round trip p50 {rt:.3f} ms (no redis-benchmark)",
        f"{'scenario':<24} {'states/s':>9} {'×floor':>7} {'e2e p50':>8} {'p95':>7} {'p99':>7} "
        f"{'max':>7} {'×rtt':>6} {'queue p50':>9} {'infer p50':>9} {'lat p50':>8} {'batch':>6} "
        f"{'backlog':>7} {'ok':>3}  cpu % of one core: {'/'.join(ROLES)}",
    ]
    for r in results:
        e = r.e2e_ms or _NO_E2E
        ratio = r.throughput / rb if rb else float("nan")
        lines.append(
            f"{r.scenario.name:<24} {r.throughput:9,.0f} {ratio:7.2f} {e['p50']:7.2f}ms "
            f"{e['p95']:7.2f} {e['p99']:7.2f} {e['max']:7.1f} {e['p50'] / rt:6.1f} "
            f"{r.queue_ms.get('p50', 0):8.2f}ms {r.infer_ms.get('p50', 0):8.3f}ms "
            f"{r.latency_ms.get('p50', 0):7.3f}ms {r.mean_batch:6.1f} {r.backlog_end_of_send:7d} "
            f"{'yes' if r.exactly_once else 'NO':>3}  {cpu_shares(r)}"
        )
    return "\n".join(lines)


def cpu_shares(r: Result) -> str:
    """Each role's CPU time over the run's wall time, in % of one core."""
    shares = []
    for role in ROLES:
        seconds = r.cpu_s.get(role)
        shares.append("?" if seconds is None or not r.wall_s > 0 else f"{100 * seconds / r.wall_s:.0f}")
    return "/".join(shares)


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor(),
    }


def document(results: list[Result], fl: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the run, as ``--json`` writes it."""
    return {
        "machine": machine(),
        "floor": fl,
        "results": [r.to_json() for r in results],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def plot(results: list[Result], path: Path) -> None:
    """Latency percentiles against offered rate, for the fixed-rate scenarios (none: no file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(
        ((r.scenario.rate, r.e2e_ms) for r in results if r.scenario.rate and r.e2e_ms), key=lambda p: p[0]
    )
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("p50", "p95", "p99"):
        ax.plot([p[0] for p in pts], [p[1][key] for p in pts], marker="o", label=key)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (states/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("statpair: latency against offered rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
