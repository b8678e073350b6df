"""ActionClient against a worker: on fakeredis, and on a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from tests.conftest import make_settings, wait_for, write_model
from worker.client import ActionClient, ActionError
from worker.server import serve

STATE = np.linspace(-1, 1, 28)


async def _exercise(redis: Redis, settings) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, redis, stop=stop))
    try:
        async with ActionClient(redis=redis, timeout=20) as client:
            action = await client.act(STATE, pair="KO/PEP")
            assert action.status == "ok" and -1 <= action.action <= 1 and action.pair == "KO/PEP"
            assert action.id.startswith(client.token)
            with pytest.raises(ActionError) as err:
                await client.act(STATE[:27])
            assert err.value.code == "invalid_state" and "27 values" in err.value.detail
            out = await client.act_many([STATE, STATE[:5], STATE * 0.5], pairs=["A/B", None, "C/D"])
            assert out[0].status == "ok" and isinstance(out[1], ActionError) and out[2].pair == "C/D"
            assert await redis.exists(client.reply_stream)
        assert not await redis.exists(client.reply_stream)  # cleaned up on close
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_client_on_fakeredis(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    write_model(s.model_dir / "m.pt")
    await _exercise(fake_redis, s)


@pytest.mark.integration
async def test_client_on_real_redis(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    s = make_settings(tmp_path, redis_url=redis_url, jit=True)
    write_model(s.model_dir / "m.pt")
    await _exercise(real_redis, s)


@pytest.mark.integration
async def test_client_times_out_without_a_worker(real_redis: Redis) -> None:
    async with ActionClient(redis=real_redis, timeout=0.3) as client:
        with pytest.raises(TimeoutError):
            await client.act(STATE)


@pytest.mark.integration
async def test_act_many_reaches_an_idle_worker_as_one_read(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url=redis_url, block_ms=2000)
    write_model(s.model_dir / "m.pt")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(s, stop=stop))
    try:
        async with ActionClient(redis=real_redis, timeout=20) as client:
            await client.act(STATE)  # the worker is up
            for n in (4, 16, 64):

                async def idle() -> bool:
                    return any(
                        c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
                        for c in await real_redis.client_list()
                    )

                await wait_for(idle, what="the worker to block on the stream")
                out = await client.act_many([STATE] * n)
                assert [r.batch_size for r in out] == [n] * n
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.integration
async def test_a_reply_stream_it_may_not_read_fails_the_call_at_once(
    real_redis: Redis, redis_url: str
) -> None:
    """An error no retry cures on the reply stream (here an ACL that lets the strategy add
    states but not read its replies) reaches the caller as that error, not as a timeout."""
    await real_redis.execute_command(
        "ACL", "SETUSER", "noreplies", "reset", "on", ">pw", "~statpair:states", "+xadd"
    )
    try:
        url = redis_url.replace("redis://", "redis://noreplies:pw@")
        async with ActionClient(url, timeout=30) as client:
            with pytest.raises(NoPermissionError):
                await client.act(STATE, pair="KO/PEP")
    finally:
        await real_redis.execute_command("ACL", "DELUSER", "noreplies")
        await real_redis.delete("statpair:states")


def test_shards_need_a_cluster() -> None:
    with pytest.raises(ValueError, match="shards=4 needs a Redis Cluster"):
        ActionClient("redis://127.0.0.1:1/0", shards=4)
