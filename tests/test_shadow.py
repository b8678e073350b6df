"""The shadow challenger's scoring: its figures equal what a direct computation on
the two models' actions gives; sampling; shedding under load."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import wait_for
from worker.shadow import Shadow, ShadowWork


@dataclass
class Linear:
    """A stand-in model: action = tanh(w · state)."""

    w: np.ndarray
    sha256: str
    state_dim: int = 28
    contract_id: str = "c1"
    pair: str | None = None

    @property
    def contract(self) -> SimpleNamespace:
        return SimpleNamespace(pair=self.pair)

    def infer(self, rows: np.ndarray) -> np.ndarray:
        return np.tanh(rows @ self.w).astype(np.float32)


def _work(n: int, champion: Linear, pairs: list[str], seed: int = 0) -> ShadowWork:
    rows = np.random.default_rng(seed).standard_normal((n, 28)).astype(np.float32)
    return ShadowWork(
        [pairs[i % len(pairs)] for i in range(n)],
        [f"1-{i}" for i in range(n)],
        rows,
        champion.infer(rows).tolist(),
        champion,  # type: ignore[arg-type]  # a stand-in with the same interface
    )


async def test_divergence_equals_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    champ = Linear(rng.standard_normal(28) * 0.2, "aaa")
    chall = Linear(rng.standard_normal(28) * 0.2, "bbb", pair="A/B")
    shadow = Shadow(lambda pair: chall if pair == "A/B" else None, 1.0, 0.1, 8)  # type: ignore[arg-type, return-value]
    works = [_work(50, champ, ["A/B", "C/D"], seed=s) for s in range(4)]
    for w in works:
        shadow.score(w)
    rows = np.concatenate([w.rows[[p == "A/B" for p in w.pairs]] for w in works])
    x, y = champ.infer(rows).astype(np.float64), chall.infer(rows).astype(np.float64)
    side = lambda a: np.where(a > 0.1, 1, np.where(a < -0.1, -1, 0))  # noqa: E731
    figures = shadow.status()["pairs"]
    assert set(figures) == {"A/B"}  # C/D has no challenger
    for part in ("total", "window"):
        f = figures["A/B"][part]
        assert f["states"] == len(x) == 100
        assert f["disagree_share"] == pytest.approx(float((side(x) != side(y)).mean()))
        assert f["mean_abs_delta"] == pytest.approx(float(np.abs(x - y).mean()), rel=1e-6)
        assert f["correlation"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), rel=1e-6)
    assert figures["A/B"]["window"]["p95_abs_delta"] == pytest.approx(float(np.percentile(np.abs(x - y), 95)))
    assert abs(figures["A/B"]["total"]["p95_abs_delta"] - np.percentile(np.abs(x - y), 95)) <= 0.006
    assert figures["A/B"]["champion"] == "aaa" and figures["A/B"]["challenger"] == "bbb"


async def test_a_challenger_of_another_contract_is_not_scored() -> None:
    champ, other = Linear(np.ones(28) * 0.01, "aaa"), Linear(np.ones(28) * 0.02, "bbb", contract_id="c2")
    shadow = Shadow(lambda pair: other, 1.0, 0.1, 8)  # type: ignore[arg-type, return-value]
    shadow.score(_work(10, champ, ["A/B"]))
    figures = shadow.status()["pairs"]["*"]  # a challenger for every pair
    assert figures["states"] == 0 and figures["incomparable"] == 10


async def test_a_challenger_for_every_pair_keeps_naming_the_champion_it_is_scored_against() -> None:
    default, xom = Linear(np.ones(28) * 0.01, "default"), Linear(np.ones(28) * 0.03, "xom", contract_id="c2")
    chall = Linear(np.ones(28) * 0.02, "chall")  # contract c1, like the default: no pair of its own
    shadow = Shadow(lambda pair: chall, 1.0, 0.1, 1)  # type: ignore[arg-type, return-value]
    shadow.score(_work(4, default, ["GLD/SLV"]))
    shadow.score(_work(3, xom, ["XOM/CVX"]))  # built for another contract: not scored
    figures = shadow.status()["pairs"]["*"]
    assert (figures["champion"], figures["states"], figures["incomparable"]) == ("default", 4, 3)
    # offered: the XOM states are counted incomparable and never queued, so never "dropped"
    shadow.offer(_work(5, xom, ["XOM/CVX"]))
    assert shadow.queue.qsize() == 0 and shadow.dropped == 0
    shadow.offer(_work(2, default, ["GLD/SLV"]))  # fills the queue of one
    shadow.offer(_work(6, default, ["GLD/SLV", "XOM/CVX"]))  # mixed: 6 states of the default's
    figures = shadow.status()["pairs"]["*"]
    assert (figures["dropped"], figures["incomparable"], shadow.dropped) == (6, 8, 6)


async def test_one_stream_write_per_drain() -> None:
    champ, chall = Linear(np.ones(28) * 0.01, "aaa"), Linear(np.ones(28) * 0.02, "bbb")
    writes: list[list[dict[str, str]]] = []

    async def record(records: list[dict[str, str]]) -> None:
        writes.append(records)

    shadow = Shadow(lambda pair: chall, 1.0, 0.1, 8, record=record)  # type: ignore[arg-type, return-value]
    works = [_work(10, champ, ["A/B"], seed=s) for s in range(5)]
    for w in works:
        shadow.offer(w)
    stop = asyncio.Event()
    task = asyncio.create_task(shadow.run(stop))
    await wait_for(
        lambda: shadow.status()["pairs"].get("*", {}).get("states") == 50, what="the five groups scored"
    )
    stop.set()
    await task
    assert len(writes) == 1 and [r["entry_id"] for r in writes[0]] == [i for w in works for i in w.entry_ids]
    first = writes[0][0]
    assert (first["champion"], first["challenger"], first["pair"]) == ("aaa", "bbb", "A/B")
    assert float(first["champion_action"]) == pytest.approx(works[0].actions[0], abs=1e-9)


async def test_sampling_and_shedding() -> None:
    champ = Linear(np.ones(28) * 0.01, "aaa")
    sampled = Shadow(lambda pair: champ, 0.25, 0.1, 1000, seed=3)  # type: ignore[arg-type, return-value]
    sampled.offer(_work(4000, champ, ["A/B"]))
    (kept,) = [sampled.queue.get_nowait()]
    assert 800 < len(kept.entry_ids) < 1200  # about a quarter
    full = Shadow(lambda pair: champ, 1.0, 0.1, 2)  # type: ignore[arg-type, return-value]
    for s in range(5):
        full.offer(_work(10, champ, ["A/B"], seed=s))
    assert full.queue.qsize() == 2 and full.dropped == 30  # shed, not queued without bound
    stop = asyncio.Event()
    task = asyncio.create_task(full.run(stop))
    await wait_for(lambda: full.queue.qsize() == 0, what="the queue to drain")
    stop.set()
    await task
    assert full.status()["pairs"]["*"]["total"]["states"] == 20


async def test_the_scorer_lets_the_loop_run_between_groups() -> None:
    """Shadow work never holds the event loop for a whole drain: answers interleave."""
    champ, chall = Linear(np.ones(28) * 0.01, "aaa"), Linear(np.ones(28) * 0.02, "bbb")
    shadow = Shadow(lambda pair: chall, 1.0, 0.1, 8)  # type: ignore[arg-type, return-value]
    order: list[str] = []
    real = shadow.score

    def score(work: ShadowWork) -> list[dict[str, str]]:
        order.append("score")
        return real(work)

    shadow.score = score  # type: ignore[method-assign]
    for seed in range(4):
        shadow.offer(_work(10, champ, ["A/B"], seed=seed))
    stop = asyncio.Event()

    async def other_work() -> None:  # stands in for the consume loop
        for _ in range(100):
            if len(order) >= 4 and order[-1] != "score":
                return
            order.append("loop")
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    task = asyncio.create_task(shadow.run(stop))
    await wait_for(lambda: order.count("score") == 4, what="four groups scored")
    stop.set()
    await task
    await other
    scores = [i for i, what in enumerate(order) if what == "score"]
    assert all(order[i + 1] == "loop" for i in scores[:-1])  # the loop ran after each group
