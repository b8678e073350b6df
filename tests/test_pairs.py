"""A model per pair and a shadow challenger, on a real Redis: mixed batches routed
to the right model, a bad file for one pair, a pair without a model, the
challenger scored on live states without touching the answers, shed under a burst."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from redis.asyncio import Redis

from agent.checkpoint import load_checkpoint
from agent.contract import PairContract
from tests.conftest import CONTRACT, make_settings, wait_for, write_model
from tests.helpers import serving
from worker.client import ActionClient, ActionError
from worker.heartbeat import beat, heartbeat_key
from worker.shadow import Shadow

pytestmark = pytest.mark.integration


def contract_for(pair: str) -> PairContract:
    """The default synthetic contract, naming the pair's two legs."""
    a, b = pair.split("/")
    data = json.loads(CONTRACT.to_json())
    data["instruments"] = {"leg_a": a, "leg_b": b}
    return PairContract.from_dict(data)


def states(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 28)).astype(np.float32) * 0.5


def own_actions(model: Path, rows: np.ndarray) -> np.ndarray:
    actor = load_checkpoint(model).actor
    with torch.inference_mode():
        return actor.deterministic(torch.from_numpy(rows)).numpy()[:, 0]


def pair_models(tmp_path: Path, pairs: list[str], default: bool = True) -> dict[str, Path]:
    models = tmp_path / "models"
    out = {}
    for i, pair in enumerate(pairs):
        folder = models / "pairs" / pair.replace("/", "-").lower()
        out[pair] = write_model(folder / "m.pt", seed=10 + i, contract=contract_for(pair))
    if default:
        out["*"] = write_model(models / "default.pt", seed=1)
    return out


async def test_each_pair_is_answered_by_its_own_model(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    models = pair_models(tmp_path, ["KO/PEP", "XOM/CVX", "GLD/SLV"])
    s = make_settings(tmp_path, redis_url=redis_url)
    async with serving(s) as server:
        await wait_for(lambda: len(server.state.models.champions()) == 4, what="four models loaded")
        async with ActionClient(redis=real_redis, timeout=20) as client:
            pairs = ["KO/PEP", "XOM/CVX", "GLD/SLV", "ABC/XYZ"] * 8  # the last has no model: the default
            rows = states(len(pairs), seed=1)
            out = await client.act_many(rows, pairs)  # one mixed batch
            assert {r.batch_size for r in out if not isinstance(r, Exception)} == {len(pairs)}
            for pair in set(pairs):
                idx = [i for i, p in enumerate(pairs) if p == pair]
                path = models.get(pair, models["*"])
                want = own_actions(path, rows[idx])
                got = [out[i] for i in idx]
                assert all(not isinstance(r, Exception) and r.model_path == str(path) for r in got)
                assert np.allclose([r.action for r in got], want, atol=1e-6)  # type: ignore[union-attr]
                sha = load_checkpoint(path).sha256[:16]
                assert {r.model_sha256 for r in got} == {sha}  # type: ignore[union-attr]
            # Each pair's contract is published under its pair; the default's under "*".
            published = await real_redis.hgetall("statpair:contracts")
            assert {k.decode() for k in published} == {"KO/PEP", "XOM/CVX", "GLD/SLV", "*"}
            assert PairContract.from_json(published[b"KO/PEP"]).pair == "KO/PEP"
            # A bad file for one pair: its old model keeps serving, the others are untouched.
            (tmp_path / "models" / "pairs" / "ko-pep" / "m.pt").write_bytes(b"not a checkpoint")
            ko = server.state.models.slots["pairs/ko-pep"].manager
            await wait_for(lambda: ko.reload_failures >= 1, what="the bad file to be tried")
            again = await client.act_many(states(3, seed=2), ["KO/PEP", "XOM/CVX", "ABC/XYZ"])
            assert [r.model_path for r in again] == [  # type: ignore[union-attr]
                str(models["KO/PEP"]),
                str(models["XOM/CVX"]),
                str(models["*"]),
            ]
        status = server.state.models.status()
        ko_row = next(r for r in status if r["slot"] == "pairs/ko-pep")
        assert ko_row["pair"] == "KO/PEP" and "not a readable checkpoint" in ko_row["last_reload_error"]
    assert server.state.stats.by_model["KO/PEP"] == 9 and server.state.stats.by_model["default"] == 9


async def test_a_pair_without_a_model_and_no_default(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    pair_models(tmp_path, ["KO/PEP"], default=False)
    s = make_settings(tmp_path, redis_url=redis_url)
    async with serving(s) as server:
        await wait_for(lambda: server.state.models.any_loaded, what="the pair's model")
        async with ActionClient(redis=real_redis, timeout=20) as client:
            ok = await client.act(np.zeros(28), pair="KO/PEP")
            assert ok.status == "ok"
            with pytest.raises(ActionError) as err:
                await client.act(np.zeros(28), pair="ABC/XYZ")
    assert err.value.code == "no_model_for_pair"
    assert err.value.detail == "no model here was trained for pair 'ABC/XYZ': this worker serves KO/PEP"


async def test_max_models_bounds_what_is_held(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    pair_models(tmp_path, ["A/B", "C/D", "E/F"])
    s = make_settings(tmp_path, redis_url=redis_url, max_models=3)  # the default and two pairs
    async with serving(s) as server:
        await wait_for(lambda: len(server.state.models.champions()) == 3, what="three models")
        refused = [r for r in server.state.models.status() if r.get("refused")]
        assert [r["slot"] for r in refused] == ["pairs/e-f"] and "MAX_MODELS=3" in refused[0]["refused"]


async def _answers(client: ActionClient, rows: np.ndarray, pairs: list[str]) -> list[float]:
    out = await client.act_many(rows, pairs)
    return [r.action for r in out]  # type: ignore[union-attr]


async def test_a_challenger_is_scored_after_the_answers_and_changes_none(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    models = pair_models(tmp_path, ["KO/PEP"])
    rows, pairs = states(64, seed=3), ["KO/PEP"] * 64
    s = make_settings(tmp_path, redis_url=redis_url, shadow_stream="statpair:shadow")
    async with serving(s) as server, ActionClient(redis=real_redis, timeout=20) as client:
        await wait_for(lambda: len(server.state.models.champions()) == 2, what="the models")
        without = await _answers(client, rows, pairs)
        # A challenger for KO/PEP: another seed, the same contract (so the same states mean the same).
        challenger = write_model(
            tmp_path / "models" / "challengers" / "ko" / "c.pt", seed=99, contract=contract_for("KO/PEP")
        )
        await wait_for(
            lambda: server.state.models.challenger_for("KO/PEP") is not None, what="the challenger"
        )
        with_shadow = await _answers(client, rows, pairs)
        shadow = server.state.shadow
        assert shadow is not None
        await wait_for(lambda: shadow.status()["pairs"].get("KO/PEP", {}).get("states") == 64, what="scoring")
        figures = shadow.status()["pairs"]["KO/PEP"]
        await wait_for(lambda: real_redis.xlen("statpair:shadow"), what="the shadow stream")
        recorded = await real_redis.xrange("statpair:shadow")
        await beat(server.state)
        hb = await real_redis.hgetall(heartbeat_key(server.state))
    assert (hb[b"models"], hb[b"challengers"]) == (b"2", b"1")  # the default and KO/PEP; one shadowing
    assert with_shadow == without  # the answers are the champion's, untouched
    champ, chall = own_actions(models["KO/PEP"], rows).astype(np.float64), own_actions(challenger, rows)
    chall = chall.astype(np.float64)

    def side(a: np.ndarray) -> np.ndarray:
        return np.where(a > 0.1, 1, np.where(a < -0.1, -1, 0))

    total = figures["total"]
    assert total["states"] == 64
    assert total["disagree_share"] == pytest.approx(float((side(champ) != side(chall)).mean()))
    assert total["mean_abs_delta"] == pytest.approx(float(np.abs(champ - chall).mean()), abs=1e-6)
    assert total["correlation"] == pytest.approx(float(np.corrcoef(champ, chall)[0, 1]), abs=1e-6)
    assert figures["window"]["p95_abs_delta"] == pytest.approx(
        float(np.percentile(np.abs(champ - chall), 95)), abs=1e-6
    )
    assert len(recorded) == 64 and {f[b"pair"] for _, f in recorded} == {b"KO/PEP"}


async def test_the_shadow_is_shed_under_a_burst(
    tmp_path: Path, real_redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair_models(tmp_path, [])
    write_model(tmp_path / "models" / "challengers" / "all" / "c.pt", seed=99)  # no pair: every pair
    s = make_settings(tmp_path, redis_url=redis_url, shadow_queue=1, read_count=4)
    # A challenger slower than the burst: its scoring starts only once the burst is answered.
    burst_answered = asyncio.Event()
    real_run = Shadow.run

    async def late_run(self: Shadow, stop: asyncio.Event) -> None:
        await burst_answered.wait()
        await real_run(self, stop)

    monkeypatch.setattr(Shadow, "run", late_run)
    async with serving(s) as server, ActionClient(redis=real_redis, timeout=30) as client:
        await wait_for(lambda: server.state.models.challenger_for(None) is not None, what="the challenger")
        out = await client.act_many(states(400, seed=4), [f"P{i % 7}/Q" for i in range(400)])
        assert all(not isinstance(r, Exception) and r.status == "ok" for r in out)  # answers unaffected
        burst_answered.set()
        shadow = server.state.shadow
        assert shadow is not None
        await wait_for(
            lambda: shadow.status()["pairs"].get("*", {}).get("states", 0) + shadow.dropped == 400,
            what="the kept batch scored",
        )
        figures = shadow.status()["pairs"]["*"]
    assert shadow.dropped > 0 and figures["dropped"] == shadow.dropped
    # Kept: the group queued during the burst and, maybe, the last one (offered just after its
    # answers went out, so possibly after the scorer emptied the queue): READ_COUNT states each.
    assert figures["states"] + shadow.dropped == 400 and 0 < figures["states"] <= 8
