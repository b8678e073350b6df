"""What the demo reports at the end: the latency with what it includes, each
synthetic pair's PnL, and the plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Track:
    """One pair's run: per tick its spread, the position taken, the PnL of holding it
    to the next tick; per answered tick the round trip and the worker's timings."""

    spread: list[float] = field(default_factory=list)
    position: list[float] = field(default_factory=list)
    pnl: list[float] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    worker_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    errors: int = 0
    backend: str = "?"


def sharpe(pnl: np.ndarray) -> float:
    """Annualised as if one tick were one trading day."""
    return float(pnl.mean() / pnl.std() * math.sqrt(252)) if pnl.size and pnl.std() > 0 else 0.0


def summarize(tracks: dict[str, Track], rate: float, plot: Path) -> None:
    """Print the latency and the PnL table, and write the plot."""
    served = sum(len(t.rtt_ms) for t in tracks.values())
    errors = sum(t.errors for t in tracks.values())
    backend = next((t.backend for t in tracks.values() if t.backend != "?"), "?")
    ticks = max((len(t.pnl) for t in tracks.values()), default=0)
    print(
        f"\nserved {served} ticks ({len(tracks)} synthetic pairs × {ticks}, {backend})"
        + (f", {errors} errors" if errors else "")
    )
    if served:
        p = np.percentile
        rtt = [x for t in tracks.values() for x in t.rtt_ms]
        worker = [x for t in tracks.values() for x in t.worker_ms]
        infer = [x for t in tracks.values() for x in t.infer_ms]
        print(
            f"round trip of PriceClient.tick (features + XADD + worker + result read), one tick at a "
            f"time, paced at {rate:g} ticks/s: p50 {p(rtt, 50):.2f} ms, p99 {p(rtt, 99):.2f} ms"
        )
        print(
            f"  of which the worker (its read → result ready): p50 {np.nanpercentile(worker, 50):.3f} ms, "
            f"p99 {np.nanpercentile(worker, 99):.3f} ms; inference p50 {np.nanpercentile(infer, 50):.3f} ms"
        )
        print("  (paced ticks start from an idle machine: `python -m bench client` times them back to back)")
    print(f"{'pair':<12} {'PnL':>8} {'Sharpe':>6} {'turnover':>8}")
    for pair, t in tracks.items():
        pnl = np.asarray(t.pnl)
        turnover = float(np.abs(np.diff(t.position, prepend=0.0)).sum()) if t.position else 0.0
        print(f"{pair:<12} {pnl.sum():+8.4f} {sharpe(pnl):6.2f} {turnover:8.1f}")
    total = _total(tracks)
    print(f"{'all pairs':<12} {total.sum():+8.4f} {sharpe(total):6.2f}")
    print("synthetic prices: PnL in log-spread units, Sharpe annualised as if a tick were a day")
    try:
        fig = figure(tracks)
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    import matplotlib.pyplot as plt

    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    print(f"plot: {plot.resolve()}")


def _total(tracks: dict[str, Track]) -> np.ndarray:
    n = min((len(t.pnl) for t in tracks.values()), default=0)  # an interrupted pair may lag by a tick
    return np.sum([np.asarray(t.pnl[:n]) for t in tracks.values()], axis=0) if tracks else np.zeros(0)


def figure(tracks: dict[str, Track]) -> Any:
    """Spread, position and cumulative PnL per pair, and the total PnL of all pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for pair, t in tracks.items():
        axes[0].plot(t.spread, label=pair, lw=1)
        axes[1].plot(t.position, label=pair, lw=1)
        axes[2].plot(np.cumsum(t.pnl), label=pair, lw=1)
    axes[2].plot(np.cumsum(_total(tracks)), label="all pairs", lw=2, color="black")
    titles = [
        "spread, as the model's contract builds it (log A − β·log B − α)",
        "position (−1 short … +1 long the spread)",
        "cumulative PnL",
    ]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=len(tracks))
    axes[2].legend(fontsize=8, ncol=len(tracks) + 1)
    axes[2].set_xlabel("tick")
    fig.suptitle("statpair demo: synthetic prices (generated, not market data)", fontsize=11)
    fig.tight_layout()
    return fig
