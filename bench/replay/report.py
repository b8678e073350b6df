"""What a replay prints (offline and live side by side, the checks, the latency, a
challenger beside the champion) and what ``--json`` writes (every figure, per step too)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.checkpoint import Checkpoint
from agent.heldout import HeldOut
from agent.scoring import Scores, Trace
from bench.e2e.report import machine
from bench.replay.compare import (
    ACTION_TOLERANCE,
    DEAD_BAND,
    ROUNDING,
    Challenge,
    Check,
    Replayed,
)
from bench.replay.live import Live
from bench.stats import percentiles

ROWS = (
    ("PnL (return)", "total_return"),
    ("Sharpe", "sharpe"),
    ("max drawdown", "max_drawdown"),
    ("turnover", "turnover"),
)


@dataclass(frozen=True)
class Run:
    """Everything one replay produced."""

    model: Path
    ck: Checkpoint
    served: Path  # the checkpoint the worker was given (the model, unless --serve)
    held: HeldOut
    offline: Trace
    live: Live
    replayed: Replayed | None
    checks: list[Check]
    diffs: dict[str, float]
    redis: str
    backend: str
    challenger: Challenge | None = None
    reference_backend: str = "eager"  # what ran the offline walk: the worker's compilation of the model

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _row(label: str, a: float, b: float | None, bound: float | None = None) -> str:
    right = "—" if b is None else f"{b:14.9f}"
    delta = "" if b is None or bound is None else f" {b - a:+10.2e} {bound:10.2e}"
    return f"  {label:<14} {a:14.9f} {right:>14}{delta}"


def text(run: Run) -> list[str]:
    c, h, (start, stop) = run.ck.contract, run.held, run.held.rows
    lines = [f"replay: {run.model}: {c.pair or 'synthetic pair'}, contract {c.id}"]
    lines += h.describe()
    lines.append(
        f"held out: {stop - start} rows, {h.span()}: {len(run.offline)} steps, starting flat; "
        f"cost {c.cost:g} per unit of position change"
    )
    if run.reference_backend == run.backend:
        how = "TorchScript" if run.backend == "jit" else "eager"
    else:  # TorchScript failed on it, as it would in the worker
        how = "eager: TorchScript failed on it"
    lines.append(
        f"offline: agent.evaluate's walk forward of the model as the worker serves it ({how}), "
        "each action read from the wire's 9 significant digits"
    )
    served = "" if run.served == run.model else f" serving {run.served} (--serve)"
    lines.append(
        f"live: 1 worker ({run.backend}{served}) over Redis ({run.redis}); PriceClient warmed with the "
        f"{run.live.warmed} rows before, then one tick a held-out row ({len(run.live.actions)} answered)"
    )
    lines.append(f"  {'':<14} {'offline':>14} {'replay':>14} {'Δ':>10} {'bound':>10}")
    rep = run.replayed
    for label, name in ROWS:
        mine = None if rep is None else float(getattr(rep.scores, name))
        lines.append(_row(label, getattr(run.offline.scores, name), mine, run.diffs.get(f"{name}_bound")))
    if rep is not None:
        d = run.diffs
        lines.append(
            f"per step: max |Δaction| {d['action']:.3g}, max |Δposition| {d['position']:.3g}, "
            f"max |ΔPnL| {d['pnl']:.3g}, max |Δspread| {d['spread']:.3g}; discrete side differs on "
            f"{d['discrete_steps']:.0f} of "
            f"{len(run.offline)} steps"
        )
    lat = percentiles(run.live.round_trip_ms)
    worker = percentiles(run.live.worker_ms)
    if lat["n"]:
        lines.append(
            f"latency of PriceClient.tick (features + round trip through Redis and the worker), "
            f"{lat['n']} ticks: p50 {lat['p50']:.3f} ms, p95 {lat['p95']:.3f}, p99 {lat['p99']:.3f}, "
            f"max {lat['max']:.3f}; the worker's own p50 {worker['p50']:.3f} ms"
        )
    if run.challenger is not None:
        lines += challenger_text(run.offline.scores, run.challenger)
    failed = [ch for ch in run.checks if not ch.ok]
    if failed:
        lines += [f"FAILED ({ch.name}): {ch.line}" for ch in failed]
        lines.append("serving does NOT equal offline on these rows")
    else:
        lines.append(
            f"agreement: serving equals offline (max |Δaction| {run.diffs['action']:.3g} ≤ "
            f"{ACTION_TOLERANCE:g}; every score within the bound those differences allow)"
        )
    return lines


def challenger_text(champ: Scores, ch: Challenge) -> list[str]:
    lines = [
        f"challenger: {ch.path}: contract {ch.contract_id}, offline walk forward on the same "
        f"{len(ch.trace)} steps" + "".join(f"; {n}" for n in ch.notes),
        f"  {'':<14} {'champion':>14} {'challenger':>14}",
    ]
    for label, name in ROWS:
        lines.append(_row(label, getattr(champ, name), getattr(ch.trace.scores, name)))
    lines.append(
        f"  disagreement: side (short/flat/long, dead band {DEAD_BAND:g}) differs on "
        f"{ch.discrete_differs:.1%} of steps; mean |Δaction| {ch.mean_abs_diff:.4f}"
    )
    return lines


def document(run: Run) -> dict[str, Any]:
    """Every figure of the run, per step too."""
    live, rep, off = run.live, run.replayed, run.offline
    doc: dict[str, Any] = {
        "benchmark": "replay",
        "model": str(run.model),
        "model_sha256": run.ck.sha256,
        "contract_id": run.ck.contract.id,
        "served_model": str(run.served),
        "served_contract_id": live.contract.id if live.contract else None,
        "served_model_sha256": sorted(live.model_sha256),
        "backend": run.backend,
        "reference_backend": run.reference_backend,
        "worker_backends": sorted(live.backends),
        "redis": run.redis,
        "cost": run.ck.contract.cost,
        "data": run.held.as_dict(),
        "warmed_rows": live.warmed,
        "ticks": len(live.actions),
        "steps": len(off),
        "error": live.error,
        "ok": run.ok,
        "checks": {c.name: {"ok": c.ok, "detail": c.line} for c in run.checks},
        "tolerances": {"action": ACTION_TOLERANCE, "score_rounding_relative": ROUNDING},
        "differences": run.diffs,
        "scores": {"offline": off.scores.as_dict(), "replay": rep.scores.as_dict() if rep else None},
        "latency_ms": {
            "price_client_tick": percentiles(live.round_trip_ms),
            "worker": percentiles(live.worker_ms),
        },
        "per_step": {
            "rows": off.rows.tolist(),
            "dates": list(off.dates) if off.dates else None,
            "offline_action": off.actions.tolist(),
            "offline_position": off.positions.tolist(),
            "offline_pnl": off.pnl.tolist(),
            "replay_action": live.actions,  # one more than the steps: the last row's tick
            "replay_discrete": live.discrete,
            "replay_position": rep.positions.tolist() if rep else None,
            "replay_pnl": rep.pnl.tolist() if rep else None,
            "replay_spread": live.spreads,
            "round_trip_ms": live.round_trip_ms,
        },
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    ch = run.challenger
    if ch is not None:
        doc["challenger"] = {
            "model": str(ch.path),
            "contract_id": ch.contract_id,
            "notes": list(ch.notes),
            "scores": ch.trace.scores.as_dict(),
            "dead_band": DEAD_BAND,
            "discrete_differs_share": ch.discrete_differs,
            "mean_abs_action_diff": ch.mean_abs_diff,
            "per_step": {
                "action": ch.trace.actions.tolist(),
                "position": ch.trace.positions.tolist(),
                "pnl": ch.trace.pnl.tolist(),
            },
        }
    return doc
