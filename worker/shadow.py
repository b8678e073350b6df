"""The shadow challenger: a candidate policy sees the live states the champion
answered, after the champion's results are published and acknowledged, and is
scored against it per pair: how often its side (short/flat/long) differs, how
far its actions are, how they correlate, how long it takes. Shadow work is
shed under load (a bounded queue, drops counted), never queued without bound
and never in front of an answer."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.model import ServedModel

logger = logging.getLogger(__name__)

WINDOW = 1000  # states per pair in the sliding window
HIST_BINS = 400  # |Δaction| histogram over [0, 2] for the all-time p95


@dataclass
class Divergence:
    """How a challenger's actions differ from the champion's on one pair."""

    dead_band: float
    n: int = 0
    disagree: int = 0
    sum_abs: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    syy: float = 0.0
    sxy: float = 0.0
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))  # (ours, theirs)
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # per batch
    dropped: int = 0
    incomparable: int = 0  # states not scored: the challenger has another contract
    champion: str = ""
    challenger: str = ""

    def add(self, champion: np.ndarray, challenger: np.ndarray) -> None:
        x, y = champion.astype(np.float64), challenger.astype(np.float64)
        d = np.abs(x - y)
        self.n += len(x)
        band = self.dead_band
        sides = np.sign(np.where(np.abs(x) > band, x, 0.0)) != np.sign(np.where(np.abs(y) > band, y, 0.0))
        self.disagree += int(sides.sum())
        self.sum_abs += float(d.sum())
        self.hist += np.bincount(
            np.minimum((d / 2.0 * HIST_BINS).astype(np.int64), HIST_BINS - 1), minlength=HIST_BINS
        )
        self.sx += float(x.sum())
        self.sy += float(y.sum())
        self.sxx += float((x * x).sum())
        self.syy += float((y * y).sum())
        self.sxy += float((x * y).sum())
        self.recent.extend(zip(x.tolist(), y.tolist(), strict=True))

    def figures(self) -> dict[str, Any]:
        """All-time and sliding-window figures (None where there is nothing yet)."""
        out: dict[str, Any] = {
            "champion": self.champion,
            "challenger": self.challenger,
            "states": self.n,
            "dropped": self.dropped,
            "incomparable": self.incomparable,
            "total": self._total(),
            "window": _figures(np.asarray(self.recent, dtype=np.float64).reshape(-1, 2), self.dead_band),
        }
        lat = sorted(self.latency_ms)
        out["shadow_infer_ms_p50"] = _q(lat, 0.5)
        out["shadow_infer_ms_p99"] = _q(lat, 0.99)
        return out

    def _total(self) -> dict[str, float | int | None]:
        if not self.n:
            return {
                "states": 0,
                "disagree_share": None,
                "mean_abs_delta": None,
                "p95_abs_delta": None,
                "correlation": None,
            }
        cum = np.cumsum(self.hist)
        p95_bin = int(np.searchsorted(cum, 0.95 * self.n))
        n = self.n
        vx, vy = self.sxx / n - (self.sx / n) ** 2, self.syy / n - (self.sy / n) ** 2
        cov = self.sxy / n - self.sx * self.sy / (n * n)
        corr = cov / math.sqrt(vx * vy) if vx > 1e-18 and vy > 1e-18 else None
        return {
            "states": n,
            "disagree_share": self.disagree / n,
            "mean_abs_delta": self.sum_abs / n,
            "p95_abs_delta": (p95_bin + 1) * 2.0 / HIST_BINS,  # the bin's upper edge: within 0.005
            "correlation": corr,
        }


def _q(values: list[float], q: float) -> float | None:
    return None if not values else float(values[min(len(values) - 1, int(q * len(values)))])


def _figures(pairs: np.ndarray, band: float) -> dict[str, float | int | None]:
    n = len(pairs)
    if not n:
        return {
            "states": 0,
            "disagree_share": None,
            "mean_abs_delta": None,
            "p95_abs_delta": None,
            "correlation": None,
        }
    x, y = pairs[:, 0], pairs[:, 1]
    d = np.abs(x - y)
    sx = np.sign(np.where(np.abs(x) > band, x, 0.0))
    sy = np.sign(np.where(np.abs(y) > band, y, 0.0))
    corr = None
    if n > 1 and x.std() > 1e-9 and y.std() > 1e-9:
        corr = float(np.corrcoef(x, y)[0, 1])
    return {
        "states": n,
        "disagree_share": float((sx != sy).mean()),
        "mean_abs_delta": float(d.mean()),
        "p95_abs_delta": float(np.percentile(d, 95)),
        "correlation": corr,
    }


@dataclass
class ShadowWork:
    """One answered group offered to the shadow: the states, what the champion did."""

    pairs: list[str | None]
    entry_ids: list[str]
    rows: np.ndarray
    actions: list[float]
    champion: ServedModel


ChallengerFor = Callable[[str | None], ServedModel | None]


class Shadow:
    """A bounded queue of answered groups and the task that scores the challenger."""

    def __init__(
        self,
        challenger_for: ChallengerFor,
        fraction: float,
        dead_band: float,
        queue_size: int,
        record: Callable[[ShadowWork, list[int], np.ndarray, ServedModel], Awaitable[None]] | None = None,
        seed: int | None = None,
    ) -> None:
        self.challenger_for = challenger_for
        self.fraction = fraction
        self.dead_band = dead_band
        self.queue: asyncio.Queue[ShadowWork] = asyncio.Queue(maxsize=queue_size)
        self.record = record  # writes the statpair:shadow stream, when on
        self.pairs: dict[str, Divergence] = {}
        self.dropped = 0
        self.failed = 0
        self._rng = random.Random(seed)

    def _div(self, challenger: ServedModel) -> Divergence:
        """A challenger's figures, by the pair it shadows (``*``: every pair): bounded by
        the challengers loaded, whatever pair labels strategies send."""
        key = challenger.contract.pair or "*"
        div = self.pairs.get(key)
        if div is None:
            div = self.pairs[key] = Divergence(self.dead_band)
        return div

    def offer(self, work: ShadowWork) -> None:
        """After the champion's answers are published: keep a sample for the challenger,
        or count it dropped when the queue is full (never wait)."""
        if self.fraction < 1.0:
            keep = [i for i in range(len(work.entry_ids)) if self._rng.random() < self.fraction]
            if not keep:
                return
            if len(keep) < len(work.entry_ids):
                work = ShadowWork(
                    [work.pairs[i] for i in keep],
                    [work.entry_ids[i] for i in keep],
                    work.rows[keep],
                    [work.actions[i] for i in keep],
                    work.champion,
                )
        try:
            self.queue.put_nowait(work)
        except asyncio.QueueFull:
            self.dropped += len(work.entry_ids)
            for pair in work.pairs:
                challenger = self.challenger_for(pair)
                if challenger is not None:
                    self._div(challenger).dropped += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Score queued work until stopped, yielding to the event loop between groups."""
        while not stop.is_set():
            try:
                work = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            await self.score(work)
            await asyncio.sleep(0)

    async def score(self, work: ShadowWork) -> None:
        by_challenger: dict[int, tuple[ServedModel, list[int]]] = {}
        for i, pair in enumerate(work.pairs):
            challenger = self.challenger_for(pair)
            if challenger is None:
                continue
            if challenger.contract_id != work.champion.contract_id:
                # The state was built for the champion's contract: to a challenger with
                # another spread or feature set it means something else. Not comparable.
                self._incomparable(work.champion, challenger)
                continue
            by_challenger.setdefault(id(challenger), (challenger, []))[1].append(i)
        for challenger, where in by_challenger.values():
            t0 = time.perf_counter()
            try:
                theirs = challenger.infer(work.rows[where])
            except Exception:
                self.failed += len(where)
                logger.exception("shadow inference failed for %d states", len(where))
                continue
            ms = (time.perf_counter() - t0) * 1e3
            ours = np.asarray([work.actions[i] for i in where], dtype=np.float32)
            div = self._div(challenger)
            div.champion, div.challenger = work.champion.sha256, challenger.sha256
            div.add(ours, theirs)
            div.latency_ms.append(ms)
            if self.record is not None:
                try:
                    await self.record(work, where, theirs, challenger)
                except Exception as exc:  # noqa: BLE001 - the stream is a convenience: count, go on
                    self.failed += len(where)
                    logger.warning("shadow stream not written: %s", exc)

    def _incomparable(self, champion: ServedModel, challenger: ServedModel) -> None:
        div = self._div(challenger)
        div.champion, div.challenger = champion.sha256, challenger.sha256
        div.incomparable += 1
        if div.incomparable == 1:
            logger.warning(
                "challenger %s (contract %s) cannot be scored on %s's live states, built for contract %s: "
                "compare them offline with python -m bench replay --challenger",
                challenger.sha256,
                challenger.contract_id,
                challenger.contract.pair or "every pair",
                champion.contract_id,
            )

    def status(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "queued": self.queue.qsize(),
            "dropped": self.dropped,
            "failed": self.failed,
            "pairs": {pair: div.figures() for pair, div in sorted(self.pairs.items())},
        }


def record_to(
    redis: Any, stream: str, maxlen: int
) -> Callable[[ShadowWork, list[int], np.ndarray, ServedModel], Awaitable[None]]:
    """A recorder that writes each scored state to ``stream`` (SHADOW_STREAM): its
    entry id, pair, both actions and both models, for scoring the challenger offline."""

    async def record(work: ShadowWork, where: list[int], theirs: np.ndarray, challenger: ServedModel) -> None:
        pipe = redis.pipeline(transaction=False)
        for j, i in enumerate(where):
            pipe.xadd(
                stream,
                {
                    "entry_id": work.entry_ids[i],
                    "pair": work.pairs[i] or "",
                    "champion_action": f"{work.actions[i]:.9g}",
                    "challenger_action": f"{float(theirs[j]):.9g}",
                    "champion": work.champion.sha256,
                    "challenger": challenger.sha256,
                },
                maxlen=maxlen,
                approximate=True,
            )
        await pipe.execute()

    return record
