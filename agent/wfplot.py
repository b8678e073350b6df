"""``agent.evaluate --plot FILE``: the spread over the whole file with the train, validation
and test windows shaded, and the cumulative PnL of the policy and the rules over the test window."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from agent.wfreport import Report

COLOURS = {"policy": "tab:blue", "rule (tuned)": "tab:orange", "rule (fixed)": "tab:green", "flat": "grey"}


def _x(dates: tuple[str, ...] | None, rows: np.ndarray) -> list[date] | np.ndarray:
    if dates is None:
        return rows
    return [date.fromisoformat(dates[int(i)][:10]) for i in rows]


def plot(report: Report, spread: np.ndarray, title: str, path: Path) -> Path:
    """Write the figure to ``path`` (PNG, or what its suffix says); matplotlib is imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    s = report.split
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), gridspec_kw={"height_ratios": [1, 2]})
    every = np.arange(s.rows)
    x = _x(s.dates, every)
    top.plot(x, spread, color="black", linewidth=0.6)
    first = x[0]
    windows = [("train", 0, s.validation if s.validation is not None else s.test, "#dddddd")]
    if s.validation is not None:
        windows.append(("validation", s.validation, s.test, "#ffe9a8"))
    windows.append(("test", s.test, s.rows - 1, "#cfe8ff"))
    for name, lo, hi, colour in windows:
        top.axvspan(x[lo], x[hi - 1] if name != "test" else x[hi], color=colour, label=name, linewidth=0)
    top.set_xlim(first, x[-1])
    top.set_ylabel("spread (log)")
    top.legend(loc="upper left", fontsize=8, ncol=3, frameon=False)
    top.set_title(title, fontsize=10)
    for name, trace in report.traces.items():
        cum = np.concatenate([[0.0], np.cumsum(trace.pnl)])
        rows = np.concatenate([trace.rows, [trace.rows[-1] + 1]])
        sharpe = trace.scores.sharpe
        bottom.plot(
            _x(s.dates, rows),
            cum,
            color=COLOURS.get(name),
            linewidth=1.2 if name == "policy" else 0.9,
            label=f"{name}: Sharpe {sharpe:.2f}, return {cum[-1]:+.3f}",
        )
    bottom.set_ylabel("cumulative PnL after costs (log units)")
    bottom.set_title(f"test window: {s.span(s.test, s.rows)}", fontsize=9)
    bottom.legend(loc="upper left", fontsize=8, frameon=False)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
