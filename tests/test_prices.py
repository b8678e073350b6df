"""From prices to actions: the contract the workers publish, contract_mismatch,
and the price-level client, against a real worker on a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from redis.asyncio import Redis

from agent.checkpoint import load_checkpoint
from agent.contract import PairContract
from agent.env import PairConfig, synthetic_prices
from agent.streaming import FeatureBuilder
from tests.conftest import CONTRACT, make_settings, wait_for, write_model
from tests.helpers import serving
from worker.client import ActionClient, ActionError
from worker.prices import ContractUnavailable, PriceClient
from worker.protocol import Fixed, Limits, decode_batch, parse_result, route_to

OTHER = PairConfig(hedge_ratio=1.25).contract()  # another spread: another contract
LIMITS = Limits(max_field_bytes=16384, default_stream="out", reply_prefix="out:", default_ttl_ms=0)
STATE = np.zeros(28, "<f4").tobytes()


def test_a_state_built_for_another_contract_is_refused() -> None:
    entries = [
        (b"1-0", {b"state_f32": STATE}),
        (b"1-1", {b"state_f32": STATE, b"contract": CONTRACT.id.encode()}),
        (b"1-2", {b"state_f32": STATE, b"contract": OTHER.id.encode()}),
    ]
    dec = decode_batch(entries, 0.0, LIMITS, route_to(Fixed(28, CONTRACT.id)))
    assert dec.valid == [0, 1] and dec.groups[0].rows.shape == (2, 28)
    bad = dec.reqs[2]
    assert bad.error == "contract_mismatch"
    assert bad.detail == (
        f"the state was built for contract {OTHER.id} but this worker serves contract {CONTRACT.id}: "
        "fetch the contract again and rebuild the features"
    )


async def test_the_worker_publishes_its_contract_and_reports_it(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    write_model(s.model_dir / "a.pt")
    async with serving(s, fake_redis):
        await wait_for(lambda: fake_redis.hexists("statpair:contracts", "*"), what="the published contract")
        published = PairContract.from_json(await fake_redis.hget("statpair:contracts", "*"))
        assert published == CONTRACT
        assert await fake_redis.hget("statpair:workers:w1", "contract") == CONTRACT.id.encode()
        async with ActionClient(redis=fake_redis, timeout=20) as client:
            ok = await client.act(np.zeros(28), contract=CONTRACT.id)
            assert ok.contract == CONTRACT.id
            with pytest.raises(ActionError) as err:
                await client.act(np.zeros(28), contract=OTHER.id)
            assert err.value.code == "contract_mismatch"
    # Not a dead letter: a normal event during a model swap.
    assert await fake_redis.xlen("statpair:states:dead") == 0


async def test_no_contract_published_is_a_clear_error(fake_redis: Redis) -> None:
    async with ActionClient(redis=fake_redis) as client:
        with pytest.raises(ContractUnavailable, match="no worker publishes a contract for 'KO/PEP'"):
            await PriceClient(client).tick("KO/PEP", 50.0, 100.0)


def _prices(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return synthetic_prices(PairConfig(), np.random.default_rng(seed), n)


@pytest.mark.integration
async def test_prices_in_actions_out_across_a_contract_change(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    """A strategy streams prices; mid-stream the workers' model changes to one with
    another contract. The client recovers (refetch, rebuild from its own history,
    retry), and every state answered was built for the contract of the model that
    answered it: its features equal those of a builder fed the whole history under
    that contract from the start, and its action is that model's own."""
    s = make_settings(tmp_path, redis_url=redis_url)
    first = write_model(s.model_dir / "a.pt", seed=1)
    a, b = _prices(400)
    sent: list[tuple[int, np.ndarray, str, float]] = []  # (tick, state, contract, action answered)
    async with serving(s), ActionClient(redis=real_redis, timeout=20) as client:
        await wait_for(lambda: _serves(real_redis, CONTRACT.id), timeout=30, what="the worker to serve")
        prices = PriceClient(client, follow_actions=False)
        assert await prices.warm("X/Y", a[:100], b[:100]) == 41
        for t in range(100, 400):
            if t == 300:  # the model changes under the strategy's feet
                second = write_model(s.model_dir / "b.pt", seed=2, contract=OTHER)
                await wait_for(
                    lambda: _serves(real_redis, OTHER.id),
                    timeout=30,
                    what="the worker to serve the new model",
                )
            # A position held into ticks 120 to 329: at the change its entry predates the
            # client's history (the last 141 ticks), so the rebuild must carry it over.
            if t in (120, 330):
                prices.report_position("X/Y", 1.0 if t == 120 else -0.5)
            result = await prices.tick("X/Y", a[t], b[t])
            if t < 140:
                assert result is None  # still warming: 141 ticks make the first state
                continue
            assert result is not None and result.status == "ok" and result.action is not None
            sent.append((t, prices._books["X/Y"].builder.row64(), result.contract or "", result.action))
    assert prices.rebuilds == 1
    assert {c for t, _, c, _ in sent if t < 300} == {CONTRACT.id}
    assert {c for t, _, c, _ in sent if t >= 300} == {OTHER.id}
    # Replayed from the first tick under each contract, with the positions held.
    for contract, model in ((CONTRACT, first), (OTHER, second)):
        actor = load_checkpoint(model).actor
        fresh = FeatureBuilder(contract)
        rows = {}
        for t in range(400):
            fresh.update(a[t], b[t], 0.0 if t < 120 else (1.0 if t < 330 else -0.5))
            if t >= 140:
                rows[t] = fresh.row64()
        for t, row, c, action in sent:
            if c != contract.id:
                continue
            assert np.array_equal(row, rows[t]), f"tick {t}: features differ from a fresh builder's"
            with torch.inference_mode():
                want = float(actor.deterministic(torch.from_numpy(row[None, :].astype(np.float32)))[0, 0])
            assert action == pytest.approx(want, abs=1e-6)


async def _serves(redis: Redis, contract_id: str) -> bool:
    return await redis.hget("statpair:workers:w1", "contract") == contract_id.encode()


@pytest.mark.integration
async def test_act_with_a_raw_state_and_no_contract_still_works(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url=redis_url)
    write_model(s.model_dir / "a.pt")
    async with serving(s):
        await real_redis.xadd("statpair:states", {"state": json.dumps([0.0] * 28), "id": "raw"})
        await wait_for(lambda: real_redis.xlen("statpair:actions"), what="the answer")
    ((_, fields),) = await real_redis.xrange("statpair:actions")
    r = parse_result(fields)
    assert r.status == "ok" and r.contract == CONTRACT.id


@pytest.mark.integration
async def test_resend_asks_again_without_feeding_the_tick_twice(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    """After a lost answer the strategy resends the last tick's state: the same state, the
    same action, and the features still count the tick once (tick again would not)."""
    s = make_settings(tmp_path, redis_url=redis_url)
    write_model(s.model_dir / "a.pt", seed=1)
    a, b = _prices(200)
    async with serving(s), ActionClient(redis=real_redis, timeout=20) as client:
        await wait_for(lambda: _serves(real_redis, CONTRACT.id), timeout=30, what="the worker to serve")
        prices = PriceClient(client)
        with pytest.raises(ValueError, match="no warmed-up tick of X/Y"):
            await prices.resend("X/Y")
        await prices.warm("X/Y", a[:150], b[:150])
        first = await prices.tick("X/Y", a[150], b[150])
        ticks = len(prices._books["X/Y"].history)
        again = await prices.resend("X/Y")
        assert first is not None and again.action == first.action and again.id != first.id
        assert len(prices._books["X/Y"].history) == ticks  # not fed twice
        fresh = FeatureBuilder(CONTRACT)
        for t in range(151):
            fresh.update(a[t], b[t], 0.0)
        assert np.array_equal(prices._books["X/Y"].builder.row64(), fresh.row64())


async def test_a_tick_that_is_not_numbers_is_a_clear_error(fake_redis: Redis) -> None:
    async with ActionClient(redis=fake_redis, timeout=1) as client:
        prices = PriceClient(client)
        with pytest.raises(TypeError, match=r"KO/PEP: the price of leg A must be a number, got '14\.2'"):
            await prices.tick("KO/PEP", "14.2", 20.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="the pair is a label"):
            await prices.tick(None, 14.2, 20.0)  # type: ignore[arg-type]


def _csv_contract(tmp_path: Path) -> PairContract:
    """A contract trained on a real file (SP500/NASDAQ 2017-2018): it records log(A/B)'s range."""
    from agent.env import PairData

    data = PairData.from_csv(Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv", None, 0.7)
    contract = data.contract(0.0005)
    assert contract.data.log_ratio is not None
    return contract


async def test_live_ticks_are_checked_like_rows_of_a_file(tmp_path: Path, fake_redis: Redis) -> None:
    """Legs swapped went silent (Sharpe +0.02 → -0.80; A/B 0.63 on the first swapped tick
    against 0.97–5.01 in training); a live 100× jump was taken; ``warm`` with unequal lengths
    was zip()'s error. Each is one sentence now, and the tick never reaches the features."""
    from worker.prices import TickRefused

    contract = _csv_contract(tmp_path)
    await fake_redis.hset("statpair:contracts", "SP500/NASDAQ", contract.to_json())
    lo, hi = contract.data.log_ratio
    a, b = 2500.0, 2500.0 / np.exp((lo + hi) / 2)  # a ratio in the middle of the training range
    async with ActionClient(redis=fake_redis, timeout=1) as client:
        prices = PriceClient(client)
        assert await prices.warm("SP500/NASDAQ", [a] * 10, [b] * 10) > 0
        with pytest.raises(
            TickRefused,
            match=r"far outside the .* the model was trained on: the legs look swapped: send SP500 as leg A",
        ):
            await prices.tick("SP500/NASDAQ", b, a)
        with pytest.raises(
            TickRefused, match=r"the price of leg A moved from 2500 to 250000 in one tick \(100×\)"
        ):
            await prices.tick("SP500/NASDAQ", a * 100, b)
        with pytest.raises(TickRefused, match="beyond it by more than its own width"):
            await prices.tick("SP500/NASDAQ", a * 5, b / 1.5)
        assert prices.needed("SP500/NASDAQ") == await prices.warm("SP500/NASDAQ", [], [])  # none fed
        with pytest.raises(ValueError, match="warm got 3 prices of leg A and 2 of leg B"):
            await prices.warm("SP500/NASDAQ", [a, a, a], [b, b])


def test_an_older_contract_keeps_its_id_without_a_training_range(tmp_path: Path) -> None:
    """A contract recorded before the log(A/B) range existed reads back with the id it had."""
    import hashlib

    older = _csv_contract(tmp_path).model_dump(mode="json")
    del older["data"]["log_ratio"]
    text = json.dumps(older, sort_keys=True, separators=(",", ":"))
    assert PairContract.from_dict(older).id == hashlib.sha256(text.encode()).hexdigest()[:12]
