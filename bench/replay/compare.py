"""Offline against live: the offline reference (the model compiled as the worker
serves it), the replay's own steps scored by the evaluation's scoring function, the
checks that serving equals offline, and a challenger's offline walk forward beside
the champion on the same rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.checkpoint import Checkpoint
from agent.contract import CsvData
from agent.data import PriceTable
from agent.env import PairData
from agent.scoring import STEPS_PER_YEAR, Scores, Trace, scores, walk_forward
from bench.replay.live import Live
from worker.model import prepare
from worker.protocol import discrete, ok_values
from worker.settings import Settings

ACTION_TOLERANCE = 1e-6  # issue 13: per-step actions agree within this
# The offline reference runs the model as the worker serves it and reads its actions
# as the wire carries them (``reference``): TorchScript's float32 differs from the
# eager actor's by an ulp or so a call, the wire rounds to 9 significant digits, and
# since each action sets the position the next state carries, either difference
# grows along a walk (eager against TorchScript: 1.7e-5 over 1735 KO/PEP steps). So
# serving a correct model matches the reference bit for bit; ε is a margin, and the
# scores are held equal up to what positions ε apart can move them
# (``score_bounds``), plus float rounding (ROUNDING, relative).
ROUNDING = 1e-12
SCORE_NAMES = ("total_return", "sharpe", "max_drawdown", "turnover")
DEAD_BAND: float = Settings.model_fields["dead_band"].default  # the workers' default: flat at or below


@dataclass(frozen=True)
class Reference:
    """The offline walk forward of the model as the worker serves it."""

    trace: Trace
    backend: str  # what ran it: "jit", or "eager" (asked for, or TorchScript failed)


def reference(path: Path, data: PairData, cost: float, backend: str) -> Reference:
    """The model walked forward offline on ``data``'s held-out rows as a strategy
    sees it served: loaded, compiled (TorchScript with ``backend`` jit, with its eager
    cross-check and fallback) and warmed up by the worker's own ``prepare``, each
    action read back from the 9 significant digits the wire carries. The wire's
    rounding (up to 5e-10) also feeds back through the position: left out, it grew
    to 4.5e-4 over XOM/CVX's 1735 held-out steps for a briefly trained 64-64 actor."""
    served = prepare(path, jit=backend == "jit")

    def policy(states: np.ndarray) -> np.ndarray:
        out = served.infer(np.ascontiguousarray(states, dtype=np.float32))
        return np.array([float(ok_values(float(a), DEAD_BAND, 0.0)[0]) for a in out])

    return Reference(walk_forward(policy, data, cost, feature_cost=cost), served.backend)


@dataclass(frozen=True)
class Replayed:
    """The live side as steps: the tick of the last held-out row only closes the last step."""

    actions: np.ndarray
    discrete: np.ndarray
    positions: np.ndarray
    pnl: np.ndarray
    turnover: np.ndarray
    scores: Scores


def replayed(live: Live, steps: int, cost: float) -> Replayed | None:
    """Score the strategy's own positions on its own spread, as ``PairTradingEnv.step``
    does (same operations in the same order); None when the replay is incomplete."""
    if live.error is not None or len(live.actions) != steps + 1:
        return None
    pos = np.asarray(live.positions[:steps], dtype=np.float64)
    before = np.concatenate([[0.0], pos[:-1]])
    traded = np.abs(pos - before)
    pnl = pos * np.diff(np.asarray(live.spreads, dtype=np.float64)) - cost * traded
    return Replayed(
        np.asarray(live.actions[:steps], dtype=np.float64),
        np.asarray(live.discrete[:steps]),
        pos,
        pnl,
        traded,
        scores(pnl[None, :], traded[None, :]),
    )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    line: str


def checks(
    offline: Trace, spread: np.ndarray, live: Live, rep: Replayed | None, ck: Checkpoint, cost: float
) -> tuple[list[Check], dict[str, float]]:
    """Every agreement check, and the differences they are made on (for the report).
    ``spread``: the offline spread of the held-out rows (one more than the steps)."""
    out = [
        Check(
            "complete",
            rep is not None,
            f"{len(live.actions)} of {len(spread)} ticks answered"
            + (f": {live.error}" if live.error else ""),
        )
    ]
    served = live.contract.id if live.contract else "none"
    out.append(
        Check(
            "contract",
            served == ck.contract.id,
            f"the worker served contract {served}, the model's is {ck.contract.id}",
        )
    )
    shas = sorted(live.model_sha256)
    out.append(
        Check(
            "model",
            shas == [ck.sha256[:16]],
            f"the worker answered with model sha256 {', '.join(shas) or 'none'}, "
            f"the model's is {ck.sha256[:16]}",
        )
    )
    diffs: dict[str, float] = {}
    if rep is None:
        return out, diffs
    diffs["action"] = float(np.max(np.abs(rep.actions - offline.actions)))
    diffs["position"] = eps = float(np.max(np.abs(rep.positions - offline.positions)))
    diffs["spread"] = float(np.max(np.abs(np.asarray(live.spreads) - spread)))
    diffs["pnl"] = float(np.max(np.abs(rep.pnl - offline.pnl)))
    diffs["discrete_steps"] = float(
        np.count_nonzero(rep.discrete != [discrete(a, DEAD_BAND) for a in offline.actions])
    )
    out.append(
        Check(
            "actions",
            diffs["action"] <= ACTION_TOLERANCE,
            f"max |Δaction| {diffs['action']:.3g} over {len(offline)} steps (limit {ACTION_TOLERANCE:g})",
        )
    )
    worst = []
    if diffs["spread"] > 0.0:
        worst.append(f"the strategy's spread differs from the offline one by up to {diffs['spread']:.3g}")
    # Positions ε apart move a step's PnL by at most ε·|Δspread| + cost·2ε.
    step_bound = eps * (np.abs(np.diff(spread)) + 2.0 * cost)
    excess = np.abs(rep.pnl - offline.pnl) - step_bound
    if excess.max() > ROUNDING:
        k = int(np.argmax(excess))
        worst.append(f"step {k}: PnL {offline.pnl[k]:.9g} offline, {rep.pnl[k]:.9g} replayed")
    bounds = score_bounds(offline, step_bound, eps)
    for name in SCORE_NAMES:
        a, b = getattr(offline.scores, name), getattr(rep.scores, name)
        diffs[name] = b - a
        diffs[f"{name}_bound"] = bounds[name]
        if not abs(b - a) <= bounds[name] + ROUNDING * max(1.0, abs(a)):
            worst.append(f"{name} {a:.9g} offline, {b:.9g} replayed (bound {bounds[name]:.3g})")
    out.append(
        Check(
            "scores",
            not worst,
            "; ".join(worst)
            or f"the same spread; PnL at every step, Sharpe, drawdown and turnover equal within "
            f"what positions {eps:.3g} apart allow",
        )
    )
    return out, diffs


def score_bounds(offline: Trace, step_bound: np.ndarray, eps: float) -> dict[str, float]:
    """How far each score can move when every position moves by at most ``eps``, so
    each step's PnL by at most ``step_bound`` (δ): their sum for the return, twice it
    for the drawdown (peak and trough each), 2ε for the mean turnover; for the Sharpe
    ratio S = √252·m/σ, with |Δm| ≤ mean(δ) and |Δσ| ≤ rms(δ),
    |ΔS| ≤ √252·(|Δm|/σ' + |m|·|Δσ|/(σ·σ')) where σ' = σ − |Δσ| (unbounded if σ' ≤ 0)."""
    total = float(step_bound.sum())
    m, sd = float(offline.pnl.mean()), float(offline.pnl.std())
    dm, dsd = float(step_bound.mean()), float(np.sqrt(np.mean(step_bound**2)))
    low = sd - dsd
    if eps == 0.0:
        sharpe = 0.0
    elif low <= 0.0:
        sharpe = math.inf
    else:
        sharpe = math.sqrt(STEPS_PER_YEAR) * (dm / low + abs(m) * dsd / (sd * low))
    return {"total_return": total, "max_drawdown": 2.0 * total, "turnover": 2.0 * eps, "sharpe": sharpe}


@dataclass(frozen=True)
class Challenge:
    """A challenger's offline walk forward on the champion's rows, at the champion's cost."""

    path: Path
    contract_id: str
    trace: Trace
    discrete_differs: float  # share of steps whose side (short/flat/long) differs from the champion's
    mean_abs_diff: float  # mean |Δaction| against the champion
    notes: tuple[str, ...]


def challenge(
    path: Path, ck: Checkpoint, table: PriceTable, champion: PairData, champ: Trace, cost: float
) -> Challenge:
    """The challenger on the same rows, its spread its own contract's (what it would be served with)."""
    c = ck.contract
    start, stop = champion.held_out
    data = PairData(
        spread=c.spread.path(table.a, table.b),
        hedge_ratio=c.spread.hedge_ratio,
        intercept=c.spread.intercept,
        n_train=start,
        train_fraction=champion.train_fraction,
        dates=table.dates,
        table=table,
    )
    trace = walk_forward(ck.actor, data, cost, feature_cost=c.cost)
    notes = []
    d = c.data
    if isinstance(d, CsvData):
        if d.sha256 == table.sha256:
            seen = max(0, min(d.train_rows[1], stop) - start)
            if seen:
                notes.append(f"it trained on {seen} of these rows: its figures flatter it")
        else:
            notes.append(f"it was trained on another file ({d.file})")
        if d.columns != table.columns:
            notes.append(f"it was trained on columns {','.join(d.columns)}")
    if c.cost != cost:
        notes.append(f"its contract's cost is {c.cost:g}; both are charged {cost:g}")
    sides = [discrete(a, DEAD_BAND) for a in champ.actions]
    differs = float(np.mean([discrete(a, DEAD_BAND) != s for a, s in zip(trace.actions, sides, strict=True)]))
    return Challenge(
        path, c.id, trace, differs, float(np.mean(np.abs(trace.actions - champ.actions))), tuple(notes)
    )
