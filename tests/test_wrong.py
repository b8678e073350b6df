"""Say it when it is wrong (issue 24), through real workers on a real redis-server: a pair
label no served model was trained for is refused (``no_model_for_pair``), naming the pairs
served and the one a near-miss label meant; workers of one stream serving different
models say so; a misspelt setting is named; a client that cannot be answered says how
many workers are alive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.contract import PairContract
from tests.conftest import CONTRACT, make_settings, wait_for, write_model
from tests.helpers import ROOT, serving
from worker.client import ActionClient, ActionError
from worker.prices import ContractUnavailable, PriceClient

pytestmark = pytest.mark.integration


def _worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "LOG_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_misspelt_setting_is_named_and_strict_settings_stops(tmp_path: Path, redis_url: str) -> None:
    """MODEL_UIR=models:/… served ./models instead of the registry champion, and
    STATPAIR_RL_JIT=1 ran eager, without a word."""
    write_model(tmp_path / "models" / "m.pt")
    env = {
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_UIR": "models:/statpair-policy@champion",
        "STATPAIR_RL_JIT": "1",
        "STATES_STREAM": "wrong:states",
    }
    out = _worker(env, "--max-messages", "0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        "environment variable MODEL_UIR is not a setting of the worker: did you mean MODEL_DIR or MODEL_URI? "
        "It is ignored." in out.stderr
    )
    assert (
        "environment variable STATPAIR_RL_JIT is not a setting of the worker: did you mean STAT_PAIR_RL_JIT?"
        in (out.stderr)
    )
    strict = _worker(env | {"STRICT_SETTINGS": "1"}, "--max-messages", "0")
    assert strict.returncode == 2
    (line,) = strict.stderr.strip().splitlines()
    assert line.startswith("invalid configuration: environment variable MODEL_UIR is not a setting")


MRK_PFE = PairContract.from_dict({**CONTRACT.model_dump(), "instruments": {"leg_a": "MRK", "leg_b": "PFE"}})


async def test_a_model_of_a_named_pair_answers_only_that_pair(
    tmp_path: Path, redis_url: str, real_redis
) -> None:
    """A default model trained on MRK/PFE answered ``mrk/pfe``, ``MRK-PFE`` and even
    SP500/NASDAQ (362 actions on states built with MRK/PFE's hedge ratio), without a word."""
    write_model(tmp_path / "models" / "m.pt", contract=MRK_PFE)
    settings = make_settings(tmp_path, redis_url=redis_url)
    state = np.zeros(28)
    async with serving(settings), ActionClient(redis_url, timeout=30) as client:
        await wait_for(
            lambda: real_redis.hexists("statpair:contracts", "MRK/PFE"), timeout=30, what="the contract"
        )
        assert (await client.act(state, pair="MRK/PFE")).status == "ok"
        assert (await client.act(state)).status == "ok"  # no label: the client's own business
        for label, meant in (("mrk/pfe", True), ("MRK-PFE", True), ("SP500/NASDAQ", False)):
            with pytest.raises(ActionError) as caught:
                await client.act(state, pair=label)
            assert caught.value.code == "no_model_for_pair"
            assert (
                f"no model here was trained for pair {label!r}: this worker serves MRK/PFE"
                in caught.value.detail
            )
            assert ("did you mean MRK/PFE?" in caught.value.detail) is meant
        assert not await real_redis.hexists("statpair:contracts", "*")  # not published for every pair
        with pytest.raises(ContractUnavailable, match="they serve MRK/PFE; did you mean MRK/PFE"):
            await PriceClient(client).fetch_contract("mrk-pfe")
        with pytest.raises(
            ContractUnavailable, match="no worker serves a model trained for pair 'SP500/NASDAQ'"
        ):
            await PriceClient(client).fetch_contract("SP500/NASDAQ")


async def test_a_synthetic_model_still_serves_any_label(tmp_path: Path, redis_url: str, real_redis) -> None:
    write_model(tmp_path / "models" / "m.pt")  # the synthetic generator's: no instrument names
    settings = make_settings(tmp_path, redis_url=redis_url)
    async with serving(settings), ActionClient(redis_url, timeout=30) as client:
        results = await client.act_many([np.zeros(28)] * 3, ["SYN-A/SYN-B", "ANY/THING", "x"])
        assert [r.status for r in results] == ["ok"] * 3


async def test_workers_of_one_stream_serving_different_models_say_so(
    tmp_path: Path, redis_url: str, real_redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A stale worker on an old folder model joined the group and took 201 of 400 states with
    another model: no log on either side. Now each says so, names the other, and shows it."""
    import logging

    caplog.set_level(logging.INFO)
    write_model(tmp_path / "a" / "models" / "m.pt", seed=1)
    write_model(tmp_path / "b" / "models" / "m.pt", seed=2)
    one = make_settings(tmp_path / "a", redis_url=redis_url, consumer="fresh", heartbeat_ttl_s=3)
    two = make_settings(tmp_path / "b", redis_url=redis_url, consumer="stale", heartbeat_ttl_s=3)
    async with serving(one) as a, serving(two) as b:
        await wait_for(
            lambda: a.state.fleet_divergent and b.state.fleet_divergent, timeout=30, what="both to see it"
        )
        for srv in (a, b):
            (models,) = [m for label, m in srv.state.fleet_divergent.items() if label == ""]
            assert set(models) == {"fresh", "stale"} and len(set(models.values())) == 2
        await real_redis.xadd("statpair:control", {"cmd": "status", "id": "fleet"})
        await wait_for(lambda: real_redis.xlen("statpair:control:replies"), timeout=30, what="status")
    assert "workers on statpair:states answer pairs with different models (a mixed fleet)" in caplog.text
    assert caplog.text.count("(a mixed fleet)") == 2  # once a worker
    replies = [f for _, f in await real_redis.xrange("statpair:control:replies")]
    import json

    fleets = [json.loads(f[b"data"])["fleet"]["divergent"] for f in replies if f.get(b"status") == b"ok"]
    assert any(set(d.get("", {})) == {"fresh", "stale"} for d in fleets)


async def test_a_second_contract_mismatch_names_the_worker(
    tmp_path: Path, redis_url: str, real_redis
) -> None:
    """The strategy died with a contract_mismatch traceback telling it to rebuild, which
    PriceClient had just done; now the error names the worker and what went on."""
    from agent.env import PairConfig, synthetic_prices
    from worker.prices import MixedFleet

    write_model(tmp_path / "models" / "m.pt", contract=MRK_PFE)
    settings = make_settings(tmp_path, redis_url=redis_url, consumer="old-one", heartbeat_ttl_s=600)
    other = PairContract.from_dict({**MRK_PFE.model_dump(), "cost": MRK_PFE.cost * 2})
    async with serving(settings), ActionClient(redis_url, timeout=30) as client:
        await wait_for(
            lambda: real_redis.hexists("statpair:contracts", "MRK/PFE"), timeout=30, what="the contract"
        )
        await real_redis.hset("statpair:contracts", "MRK/PFE", other.to_json())  # what the rest publish
        prices = PriceClient(client)
        a, b = synthetic_prices(PairConfig(), np.random.default_rng(0), 200)
        with pytest.raises(MixedFleet) as caught:
            for pa, pb in zip(a, b, strict=True):
                await prices.tick("MRK/PFE", float(pa), float(pb))
    text = str(caught.value)
    assert text.startswith(
        "MRK/PFE: worker old-one answered contract_mismatch again after the rebuild on contract"
    )
    assert (
        "the workers of this stream serve different models" in text
        and caught.value.code == "contract_mismatch"
    )
