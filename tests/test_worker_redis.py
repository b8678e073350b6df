"""The serving path against a real redis-server (started by a fixture on a free
port): the original design's seven serving cases, each through real streams,
a blocking XREADGROUP and the control stream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import make_settings, unique, wait_for, write_model
from tests.helpers import serving
from tests.servers import need_binary
from worker.protocol import parse_result
from worker.server import serve
from worker.settings import Settings

pytestmark = pytest.mark.integration

STATE = [0.05 * i for i in range(28)]
ROOT = Path(__file__).resolve().parent.parent


async def ask(redis: Redis, n: int = 1, stream: str = "statpair:actions", **fields: str) -> list:
    """XADD n states with fresh ids and wait for their n results on ``stream``."""
    ids = [unique("r") for _ in range(n)]
    for cid in ids:
        await redis.xadd("statpair:states", {"state": json.dumps(STATE), "id": cid, **fields})
    found: dict[str, object] = {}

    async def all_answered() -> bool:
        for _, f in await redis.xrevrange(stream, count=n + 50):
            r = parse_result(f)
            if r.id in ids:
                found[r.id] = r
        return len(found) == n

    await wait_for(all_answered, what=f"{n} results")
    return [found[cid] for cid in ids]


async def _len_at_least(redis: Redis, stream: str, n: int) -> bool:
    return await redis.xlen(stream) >= n


async def control(redis: Redis, **fields: str) -> dict:
    before = await redis.xlen("statpair:control:replies")
    await redis.xadd("statpair:control", fields)
    await wait_for(
        lambda: _len_at_least(redis, "statpair:control:replies", before + 1),
        timeout=30,
        what="a control reply",
    )
    ((_, reply),) = await redis.xrevrange("statpair:control:replies", count=1)
    return {k.decode(): v.decode() for k, v in reply.items()}


async def test_cold_start_no_model_then_model_appears(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url=redis_url)
    async with serving(s):
        (r,) = await ask(real_redis)
        assert r.status == "error" and r.error == "model_unavailable"
        write_model(s.model_dir / "a.pt")
        await wait_for(lambda: _served(real_redis), what="the model to be picked up")
    assert (await real_redis.xpending("statpair:states", "statpair-workers"))["pending"] == 0


async def _served(redis: Redis) -> bool:
    (r,) = await ask(redis)
    return r.status == "ok"


async def test_load_predict_and_hot_reload(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    s = make_settings(tmp_path, redis_url=redis_url)
    path = write_model(s.model_dir / "a.pt", seed=1)
    os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    async with serving(s):
        first = await ask(real_redis, 3, pair="KO/PEP")
        assert all(r.status == "ok" and r.pair == "KO/PEP" for r in first)
        write_model(s.model_dir / "a.pt", seed=2)
        await wait_for(lambda: _sha_changed(real_redis, first[0].model_sha256), what="hot reload")
    last = parse_result((await real_redis.xrevrange("statpair:actions", count=1))[0][1])
    assert last.model_mtime_utc != first[0].model_mtime_utc and last.action != first[0].action


async def _sha_changed(redis: Redis, old: str) -> bool:
    (r,) = await ask(redis)
    return r.model_sha256 != old


async def test_force_reload_via_control(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    s = make_settings(tmp_path, redis_url=redis_url, watch_interval_s=3600)  # watcher effectively off
    write_model(s.model_dir / "a.pt", seed=1)
    async with serving(s):
        (before,) = await ask(real_redis)
        write_model(s.model_dir / "a.pt", seed=2)
        reply = await control(real_redis, cmd="reload")
        assert reply["status"] == "ok" and json.loads(reply["data"])["swapped"] is True
        (after,) = await ask(real_redis)
    assert after.model_sha256 != before.model_sha256


async def test_batch_shape_validation(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    s = make_settings(tmp_path, redis_url=redis_url)
    write_model(s.model_dir / "a.pt")
    async with serving(s):
        await real_redis.xadd("statpair:states", {"state": json.dumps(STATE[:27]), "id": "bad"})
        (ok,) = await ask(real_redis)
    out = [parse_result(f) for _, f in await real_redis.xrange("statpair:actions")]
    bad = next(r for r in out if r.id == "bad")
    assert bad.error == "invalid_state" and bad.detail == "state has 27 values, the model expects 28"
    assert ok.status == "ok"
    assert await real_redis.xlen("statpair:states:dead") == 1


async def test_benchmark_and_status_via_control(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    s = make_settings(tmp_path, redis_url=redis_url)
    write_model(s.model_dir / "a.pt")
    async with serving(s):
        await ask(real_redis, 2)
        bench = await control(real_redis, cmd="benchmark", batch_sizes="1,32", iters="20", warmup="5")
        status = await control(real_redis, cmd="status")
    figures = json.loads(bench["data"])["batches"]
    assert set(figures) == {"1", "32"} and all(v["p50_ms"] > 0 for v in figures.values())
    assert json.loads(status["data"])["results"]["ok"] >= 2


async def test_jit_compile_via_env(
    tmp_path: Path, real_redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAT_PAIR_RL_JIT", "1")
    s = make_settings(tmp_path, redis_url=redis_url, jit=Settings().jit)
    write_model(s.model_dir / "a.pt")
    async with serving(s):
        (r,) = await ask(real_redis)
    assert r.backend == "jit" and r.jit_compiled is True


async def test_explicit_model_path_env_override(
    tmp_path: Path, real_redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model(tmp_path / "pinned.pt", seed=1)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "pinned.pt"))
    s = make_settings(tmp_path, redis_url=redis_url, model_path=Settings().model_path)
    write_model(s.model_dir / "newer.pt", seed=2)
    async with serving(s):
        (r,) = await ask(real_redis)
    assert r.model_path == str(tmp_path / "pinned.pt")


async def test_reply_to_and_trimming(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    s = make_settings(tmp_path, redis_url=redis_url, results_maxlen=10)
    write_model(s.model_dir / "a.pt")
    pipe = real_redis.pipeline(transaction=False)
    for _ in range(600):
        pipe.xadd("statpair:states", {"state": json.dumps(STATE), "reply_to": "statpair:actions:me"})
    await pipe.execute()
    async with serving(s):
        await wait_for(lambda: _drained(real_redis), what="600 entries answered")
    # MAXLEN ~ trims whole macro-nodes (100 entries by default), so "about" 10.
    assert 10 <= await real_redis.xlen("statpair:actions:me") < 300


async def _drained(redis: Redis) -> bool:
    groups = await redis.xinfo_groups("statpair:states")
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0


def test_redis_cli_session(tmp_path: Path, redis_server) -> None:
    """What docs/protocol.md shows: `python -m worker` and nothing but redis-cli."""
    cli = need_binary("redis-cli")
    port = str(redis_server.port)
    rc = [cli, "-h", "127.0.0.1", "-p", port]
    subprocess.run([*rc, "FLUSHALL"], check=True, capture_output=True)
    write_model(tmp_path / "models" / "policy.pt")
    zeros = json.dumps([0.0] * 28)
    subprocess.run(
        [*rc, "XADD", "statpair:states", "*", "id", "demo-1", "pair", "KO/PEP", "state", zeros],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*rc, "XADD", "statpair:states", "*", "id", "demo-2", "state", "[1, 2, 3]"],
        check=True,
        capture_output=True,
    )
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "MODEL_DIR": str(tmp_path / "models"),
        "STAT_PAIR_RL_JIT": "1",
        "LOG_LEVEL": "INFO",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "--max-messages", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "loaded model" in proc.stderr and "backend jit" in proc.stderr
    out = subprocess.run(
        [*rc, "XRANGE", "statpair:actions", "-", "+"], check=True, capture_output=True, text=True
    ).stdout
    assert "demo-1" in out and "ok" in out and "action" in out and "jit" in out
    assert "demo-2" in out and "invalid_state" in out and "state has 3 values, the model expects 28" in out


async def test_reply_to_that_is_not_a_stream_is_answered_elsewhere(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url=redis_url)
    write_model(s.model_dir / "a.pt")
    await real_redis.set("statpair:actions:oops", "a string, not a stream")
    await real_redis.xadd(
        "statpair:states", {"state": json.dumps(STATE), "id": "lost?", "reply_to": "statpair:actions:oops"}
    )
    async with serving(s):
        (ok,) = await ask(real_redis)  # the batch after it is fine
    by_id = {parse_result(f).id: parse_result(f) for _, f in await real_redis.xrange("statpair:actions")}
    moved = by_id["lost?"]
    assert moved.status == "error" and moved.error == "internal"
    assert "could not be written to 'statpair:actions:oops'" in moved.detail and moved.action is None
    assert ok.status == "ok"
    assert await real_redis.get("statpair:actions:oops") == b"a string, not a stream"
    assert (await real_redis.xinfo_groups("statpair:states"))[0]["pending"] == 0


async def test_idle_spin_answers_while_busy_waiting(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url=redis_url, idle_spin_ms=500)
    write_model(s.model_dir / "a.pt")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(s, stop=stop))
    try:
        for _ in range(5):  # one at a time: each next state comes inside the spin window
            (r,) = await ask(real_redis)
            assert r.status == "ok"
    finally:
        stop.set()
        worker = await asyncio.wait_for(task, timeout=30)
    assert worker.stats.results["ok"] == 5 and worker.stats.spun >= 1
