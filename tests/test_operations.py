"""What operators watch: Prometheus metrics, /healthz and /readyz, the Redis
heartbeat, and secrets kept out of logs, status replies and metrics."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import make_settings, wait_for, write_model
from tests.helpers import WorkerProcess
from tests.servers import free_port, start_redis
from worker.server import serve
from worker.settings import mask_url

pytestmark = pytest.mark.integration
STATE = json.dumps([0.05 * i for i in range(28)])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except urllib.error.URLError as err:  # not listening yet
        return 0, str(err.reason)


def _counted(text: str) -> bool:
    return "statpair_queue_ms_count 3.0" in text


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in metrics")


async def test_metrics_health_and_heartbeat(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    port = free_port()
    s = make_settings(
        tmp_path, redis_url=redis_url, metrics_port=port, metrics_host="127.0.0.1", heartbeat_ttl_s=3
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(s, stop=stop))
    try:
        await wait_for(lambda: get(port, "/healthz")[0] == 200, what="/healthz")
        assert get(port, "/readyz") == (503, "no model loaded\n")
        write_model(s.model_dir / "m.pt")
        await wait_for(lambda: get(port, "/readyz")[0] == 200, what="/readyz after the model appears")
        for body in (STATE, STATE, "[1]"):
            await real_redis.xadd("statpair:states", {"state": body})
        await wait_for(lambda: _count(real_redis, 3), what="3 answers")
        # Results are visible in Redis a moment before the worker counts them.
        await wait_for(lambda: _counted(get(port, "/metrics")[1]), what="3 entries in the metrics")
        await wait_for(lambda: "statpair_group_pending 0.0" in get(port, "/metrics")[1], what="group gauges")
        text = get(port, "/metrics")[1]
        assert value(text, 'statpair_entries_total{error="",status="ok"}') == 2
        assert value(text, 'statpair_entries_total{error="invalid_state",status="error"}') == 1
        assert value(text, "statpair_queue_ms_count") == 3
        assert value(text, "statpair_latency_ms_count") == value(text, "statpair_batch_size_count") >= 1
        assert value(text, "statpair_model_reloads_total") == 1
        assert value(text, "statpair_dead_lettered_total") == 1
        assert value(text, "statpair_model_loaded") == 1 and value(text, "statpair_redis_up") == 1
        assert 'statpair_model_info{backend="eager"' in text and "statpair_group_lag" in text
        await wait_for(
            lambda: _beat_says(real_redis, b"backend", b"eager"), what="a heartbeat with the model"
        )
        beat = await real_redis.hgetall("statpair:workers:w1")
        assert beat[b"name"] == b"w1" and beat[b"model_sha256"] and beat[b"last_seen_utc"]
        assert 0 < await real_redis.ttl("statpair:workers:w1") <= 3
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert not await real_redis.exists("statpair:workers:w1")  # removed on a clean stop


async def _beat_says(redis: Redis, key: bytes, want: bytes) -> bool:
    return (await redis.hgetall("statpair:workers:w1")).get(key) == want


async def _count(redis: Redis, n: int) -> bool:
    return await redis.xlen("statpair:actions") >= n


def test_mask_url() -> None:
    assert mask_url("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert mask_url("rediss://user:s3cret@db/1") == "rediss://user:***@db/1"
    assert mask_url("redis://db:6379") == "redis://db:6379"


@pytest.mark.slow
async def test_password_never_leaks(tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    executor = start_redis(tmp_path / "redis", password=secret)
    url = f"redis://:{secret}@127.0.0.1:{executor.port}/0"
    port = free_port()
    write_model(tmp_path / "models" / "m.pt")
    client = Redis.from_url(url)
    w = WorkerProcess(
        tmp_path / "w.log",
        REDIS_URL=url,
        MODEL_DIR=str(tmp_path / "models"),
        METRICS_PORT=str(port),
        METRICS_HOST="127.0.0.1",
        CONSUMER="w-secret",
        LOG_LEVEL="DEBUG",
    )
    try:
        w.wait_log("loaded model")
        await client.xadd("statpair:control", {"cmd": "status"})
        await wait_for(lambda: client.exists("statpair:control:replies"), what="a status reply")
        reply = (await client.xrange("statpair:control:replies"))[0][1]
        assert secret not in reply[b"data"].decode() and ":***@" in reply[b"data"].decode()
        await wait_for(lambda: get(port, "/metrics")[0] == 200, what="metrics")
        assert secret not in get(port, "/metrics")[1]
        w.signal(signal.SIGTERM)
        assert w.wait(60) == 0
        assert secret not in w.log() and ":***@127.0.0.1" in w.log()
    finally:
        w.close()
        await client.aclose()
        executor.stop()
