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
            return _no_figures()
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
            # The upper edge of the bin holding the nearest-rank p95: at most one bin (0.005) above it;
            # the window's p95 interpolates, so the two can differ by a little more on the same states.
            "p95_abs_delta": (p95_bin + 1) * 2.0 / HIST_BINS,
            "correlation": corr,
        }


def _q(values: list[float], q: float) -> float | None:
    return None if not values else float(values[min(len(values) - 1, int(q * len(values)))])


def _no_figures() -> dict[str, float | int | None]:
    """The figures of a challenger that has scored nothing (yet)."""
    return {
        "states": 0,
        "disagree_share": None,
        "mean_abs_delta": None,
        "p95_abs_delta": None,
        "correlation": None,
    }


def _figures(pairs: np.ndarray, band: float) -> dict[str, float | int | None]:
    n = len(pairs)
    if not n:
        return _no_figures()
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
# One scored state for the statpair:shadow stream: its fields, in order.
ShadowRecord = dict[str, str]
DRAIN = 64  # queued groups scored together: their stream entries go out in one round trip


class Shadow:
    """A bounded queue of answered groups and the task that scores the challenger."""

    def __init__(
        self,
        challenger_for: ChallengerFor,
        fraction: float,
        dead_band: float,
        queue_size: int,
        record: Callable[[list[ShadowRecord]], Awaitable[None]] | None = None,
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
        self._warned: set[tuple[str, str]] = set()  # (challenger, champion contract): bounded by models

    def _div(self, challenger: ServedModel) -> Divergence:
        """A challenger's figures, by the pair it shadows (``*``: every pair): bounded by
        the challengers loaded, whatever pair labels strategies send."""
        key = challenger.contract.pair or "*"
        div = self.pairs.get(key)
        if div is None:
            div = self.pairs[key] = Divergence(self.dead_band)
        return div

    def _comparable(self, pair: str | None, champion: ServedModel) -> ServedModel | None:
        """The challenger that can score a state of ``pair`` the champion answered, or None: no
        challenger for the pair, or one of another contract (counted incomparable)."""
        challenger = self.challenger_for(pair)
        if challenger is None:
            return None
        if challenger.contract_id != champion.contract_id:
            # The state was built for the champion's contract: to a challenger with another
            # spread or feature set it means something else. Not comparable.
            self._incomparable(pair, champion, challenger)
            return None
        return challenger

    def offer(self, work: ShadowWork) -> None:
        """After the champion's answers are published: keep a sample of the states a
        challenger can score, or count them dropped when the queue is full (never wait)."""
        keep = [
            i
            for i, pair in enumerate(work.pairs)
            if (self.fraction >= 1.0 or self._rng.random() < self.fraction)
            and self._comparable(pair, work.champion) is not None
        ]
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
        """Score queued work until stopped, yielding to the event loop between drains; the
        stream entries of everything scored in one drain go out in one round trip."""
        while not stop.is_set():
            try:
                work = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [work]
            while len(batch) < DRAIN and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            records: list[ShadowRecord] = []
            for w in batch:
                records += self.score(w)
                await asyncio.sleep(0)  # a group at a time: answers never wait behind a drain
            if records and self.record is not None:
                try:
                    await self.record(records)
                except Exception as exc:  # noqa: BLE001 - the stream is a convenience: count, go on
                    self.failed += len(records)
                    logger.warning("shadow stream not written: %s", exc)
            await asyncio.sleep(0)

    def score(self, work: ShadowWork) -> list[ShadowRecord]:
        """Score one answered group against its challengers; return the stream entries of the
        states scored (empty when the stream is off)."""
        by_challenger: dict[int, tuple[ServedModel, list[int]]] = {}
        for i, pair in enumerate(work.pairs):
            # Asked again: a model may have been swapped since the group was offered.
            challenger = self._comparable(pair, work.champion)
            if challenger is not None:
                by_challenger.setdefault(id(challenger), (challenger, []))[1].append(i)
        records: list[ShadowRecord] = []
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
                records += [
                    {
                        "entry_id": work.entry_ids[i],
                        "pair": work.pairs[i] or "",
                        "champion_action": f"{work.actions[i]:.9g}",
                        "challenger_action": f"{float(theirs[j]):.9g}",
                        "champion": work.champion.sha256,
                        "challenger": challenger.sha256,
                    }
                    for j, i in enumerate(where)
                ]
        return records

    def _incomparable(self, pair: str | None, champion: ServedModel, challenger: ServedModel) -> None:
        """Count a state the challenger cannot score (its figures keep naming the champion it
        does score against); warn once per challenger and champion contract."""
        div = self._div(challenger)
        div.challenger = challenger.sha256
        div.incomparable += 1
        key = (challenger.sha256, champion.contract_id)
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(
                "challenger %s (contract %s) cannot be scored on %s's states: they are built for "
                "champion %s's contract %s; compare them offline with python -m bench replay --challenger",
                challenger.sha256,
                challenger.contract_id,
                pair or "the default pair",
                champion.sha256,
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


def record_to(redis: Any, stream: str, maxlen: int) -> Callable[[list[ShadowRecord]], Awaitable[None]]:
    """A recorder that writes scored states to ``stream`` (SHADOW_STREAM), one pipeline per
    drain: each state's entry id, pair, both actions and both models, for scoring offline."""

    async def record(records: list[ShadowRecord]) -> None:
        pipe = redis.pipeline(transaction=False)
        for fields in records:
            pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)
        await pipe.execute()

    return record
