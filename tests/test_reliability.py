"""Faults the worker must survive, each against a real redis-server: SIGKILL
mid-run, poison entries, Redis going away, SIGTERM/SIGINT under load, bad
model files while serving, secrets kept out of logs and replies."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis

import worker.loop
from tests.conftest import make_settings, wait_for, write_model
from tests.helpers import WorkerProcess
from tests.servers import free_port, start_redis
from worker.protocol import parse_result
from worker.server import serve

pytestmark = pytest.mark.integration

STATE = [0.05 * i for i in range(28)]
F32 = np.asarray(STATE, "<f4").tobytes()


async def produce(redis: Redis, n: int, chunk: int = 200, **extra: str) -> list[bytes]:
    ids: list[bytes] = []
    for start in range(0, n, chunk):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(n, start + chunk)):
            pipe.xadd("statpair:states", {"state_f32": F32, "id": f"s{i}", **extra})
        ids += await pipe.execute()
    return ids


async def answered(redis: Redis, stream: str = "statpair:actions") -> Counter[str]:
    """How many results each entry_id has."""
    out: Counter[str] = Counter()
    last = "-"
    for _ in range(10_000):  # bounded paging
        page = await redis.xrange(stream, min=last, count=5000)
        if last != "-":
            page = page[1:]
        if not page:
            break
        for _, fields in page:
            out[fields[b"entry_id"].decode()] += 1
        last = page[-1][0].decode()
    return out


def env_for(url: str, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": url,
        "MODEL_DIR": str(tmp_path / "models"),
        "CONSUMER": name,
        "STAT_PAIR_RL_JIT": "1",
        "BLOCK_MS": "100",
        "RESULTS_MAXLEN": "1000000",
        **extra,
    }


async def test_sigkill_mid_run_entries_are_reclaimed(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    write_model(tmp_path / "models" / "m.pt", hidden=(512, 512))
    n = 6000
    await real_redis.xgroup_create("statpair:states", "statpair-workers", id="0", mkstream=True)
    ids = await produce(real_redis, 40)
    # A worker that "died" earlier, holding 40 entries it read and never answered.
    await real_redis.xreadgroup("statpair-workers", "w-dead", {"statpair:states": ">"}, count=40)
    extra = {"CLAIM_IDLE_MS": "300", "CLAIM_INTERVAL_S": "0.2", "READ_COUNT": "64"}
    a = WorkerProcess(tmp_path / "a.log", **env_for(redis_url, tmp_path, "w-a", **extra))
    b = WorkerProcess(tmp_path / "b.log", **env_for(redis_url, tmp_path, "w-b", **extra))
    try:
        a.wait_log("loaded model")
        b.wait_log("loaded model")
        ids += await produce(real_redis, n // 2)
        # Kill w-a while it holds a batch it has read but not acknowledged: freeze it,
        # look at its pending entries, and either kill it or let it go on and retry.
        # w-b is frozen meanwhile, so that w-a, the only reader, is busy with the new
        # entries (on a loaded host w-b could otherwise read them all first).
        b.signal(signal.SIGSTOP)
        owned: list = []
        try:
            for _ in range(200):
                a.signal(signal.SIGSTOP)
                owned = await real_redis.xpending_range(
                    "statpair:states", "statpair-workers", "-", "+", 10_000, consumername="w-a"
                )
                if owned:
                    a.signal(signal.SIGKILL)
                    break
                a.signal(signal.SIGCONT)
                ids += await produce(real_redis, 50)
        finally:
            b.signal(signal.SIGCONT)
        assert owned, "never caught w-a with a batch in hand"
        assert a.wait(30) == -signal.SIGKILL
        ids += await produce(real_redis, max(0, n - len(ids)))

        async def all_answered() -> bool:
            got = await answered(real_redis)
            return all(got[i.decode()] >= 1 for i in ids)

        await wait_for(all_answered, timeout=120, what="every entry to be answered")
        got = await answered(real_redis)
        by = {f[b"entry_id"]: f[b"worker"] for _, f in await real_redis.xrange("statpair:actions")}
        assert {by[row["message_id"]] for row in owned} == {b"w-b"}
        assert (await real_redis.xinfo_groups("statpair:states"))[0]["pending"] == 0
        assert "reclaimed" in a.log() + b.log()
        dupes = sum(1 for i in ids if got[i.decode()] > 1)
        print(
            f"\n{len(ids)} entries, all answered; w-a held {len(owned)} unacknowledged at SIGKILL, "
            f"answered by w-b; {dupes} answered twice"
        )
    finally:
        a.close()
        b.signal(signal.SIGTERM)
        assert b.wait(60) == 0
        b.close()


async def test_poison_entry_is_dead_lettered_after_max_deliveries(
    tmp_path: Path, real_redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decode = worker.loop.decode_batch

    def flaky_decode(entries, *args):
        if any(b"poison" in fields for _, fields in entries):
            raise RuntimeError("simulated bug triggered by this entry")
        return real_decode(entries, *args)

    monkeypatch.setattr(worker.loop, "decode_batch", flaky_decode)
    s = make_settings(
        tmp_path, redis_url=redis_url, max_deliveries=3, claim_idle_ms=100, claim_interval_s=0.1
    )
    write_model(s.model_dir / "m.pt")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(s, stop=stop))
    try:
        good = await produce(real_redis, 5)
        (bad,) = await produce(real_redis, 1, poison="1", reply_to="statpair:actions:client")
        good += await produce(real_redis, 5)

        async def settled() -> bool:
            return await real_redis.xlen("statpair:actions:client") == 1

        await wait_for(settled, timeout=60, what="the poison entry to be retired")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    (result,) = [parse_result(f) for _, f in await real_redis.xrange("statpair:actions:client")]
    assert result.error == "internal" and "each of 3 deliveries" in result.detail
    assert result.entry_id == bad.decode() and result.id == "s0"
    (dead,) = [f for _, f in await real_redis.xrange("statpair:states:dead")]
    assert dead[b"deliveries"] == b"3" and dead[b"error"] == b"internal"
    assert dead[b"entry_id"] == bad and dead[b"orig:poison"] == b"1"
    got = await answered(real_redis)
    assert all(got[i.decode()] == 1 for i in good)
    assert (await real_redis.xinfo_groups("statpair:states"))[0]["pending"] == 0


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server of this test's own, persistent (appendonly) so it can be restarted."""
    executor = start_redis(tmp_path / "redis-data", appendonly=True)
    yield executor
    if executor.running():
        executor.stop()


@pytest.mark.slow
async def test_redis_outage_and_restart(tmp_path: Path, own_redis) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    write_model(tmp_path / "models" / "m.pt")
    client = Redis.from_url(url)
    w = WorkerProcess(tmp_path / "w.log", **env_for(url, tmp_path, "w-out"))
    try:
        w.wait_log("loaded model")
        await produce(client, 10)
        await wait_for(lambda: _len(client, 10), what="first answers")
        # Connections reset under the worker's feet: it reconnects.
        await client.client_kill_filter(_type="normal", skipme=True)
        await produce(client, 10)
        await wait_for(lambda: _len(client, 20), what="answers after a connection reset")
        # Freeze the worker, queue states, stop Redis (the AOF keeps them), thaw the worker.
        w.signal(signal.SIGSTOP)
        waiting = await produce(client, 50)
        await client.aclose()
        own_redis.stop()
        w.signal(signal.SIGCONT)
        w.wait_log("Redis unavailable", count=3, timeout=60)
        cpu0, t0 = w.cpu_seconds(), time.monotonic()
        w.wait_log("Redis unavailable", count=5, timeout=60)
        busy = (w.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        assert w.proc.poll() is None, "the worker exited during the outage"
        own_redis.start()
        client = Redis.from_url(url)
        await wait_for(lambda: _len(client, 70), timeout=60, what="answers after the restart")
        got = await answered(client)
        assert all(got[i.decode()] >= 1 for i in waiting)
        assert "Redis reachable again" in w.log()
        assert busy < 0.5, f"worker used {busy:.0%} of a core while Redis was down"
        print(f"\nCPU during the outage: {busy:.1%} of a core")
    finally:
        w.close()
        await client.aclose()


async def _len(client: Redis, n: int) -> bool:
    return await client.xlen("statpair:actions") >= n


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_under_load_drains_and_exits_zero(
    tmp_path: Path, real_redis: Redis, redis_url: str, sig: int
) -> None:
    write_model(tmp_path / "models" / "m.pt", hidden=(256, 256))
    w = WorkerProcess(tmp_path / "w.log", **env_for(redis_url, tmp_path, "w-sig", READ_COUNT="32"))
    try:
        w.wait_log("loaded model")
        producer = asyncio.create_task(produce(real_redis, 20_000, chunk=100))
        await wait_for(lambda: _len(real_redis, 500), timeout=60, what="the worker to be busy")
        w.signal(sig)
        assert w.wait(60) == 0
        await producer
    finally:
        w.close()
    log = w.log()
    assert f"{signal.Signals(sig).name} received" in log and "stopped after" in log
    # Everything it read was answered and acknowledged, so it left the group.
    consumers = await real_redis.xinfo_consumers("statpair:states", "statpair-workers")
    assert [c["name"] for c in consumers] == []
    assert (await real_redis.xinfo_groups("statpair:states"))[0]["pending"] == 0
    got = await answered(real_redis)
    processed = int(log.rsplit("stopped after ", 1)[1].split()[0])
    assert sum(got.values()) == processed == len(got)  # one result each, no more
    info = (await real_redis.xinfo_groups("statpair:states"))[0]
    assert info["lag"] > 0  # it stopped mid-load, so states were left for other workers


async def test_bad_model_files_while_serving(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    port = free_port()
    s = make_settings(tmp_path, redis_url=redis_url, metrics_port=port, metrics_host="127.0.0.1")
    path = write_model(s.model_dir / "m.pt")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(s, stop=stop))
    try:
        await produce(real_redis, 3)
        await wait_for(lambda: _len(real_redis, 3), what="first answers")
        first_sha = parse_result((await real_redis.xrange("statpair:actions"))[0][1]).model_sha256
        good = path.read_bytes()
        for n, bad in enumerate([b"garbage" * 500, good[: len(good) // 2], None], start=1):
            if bad is None:
                write_model(path, state_dim=27)
            else:
                path.write_bytes(bad)
            await wait_for(
                lambda n=n: _metric(port, "statpair_model_reload_failures_total") >= n,
                timeout=30,
                what=f"reload failure {n} in metrics",
            )
            await produce(real_redis, 2)
            await wait_for(lambda n=n: _len(real_redis, 3 + 2 * n), what="answers from the old model")
            last = parse_result((await real_redis.xrevrange("statpair:actions", count=1))[0][1])
            assert last.status == "ok" and last.model_sha256 == first_sha
        await real_redis.xadd("statpair:control", {"cmd": "status"})
        await wait_for(lambda: _exists(real_redis, "statpair:control:replies"), what="status reply")
        reply = (await real_redis.xrange("statpair:control:replies"))[0][1]
        data = json.loads(reply[b"data"])
        assert data["reload_failures"] == 3 and "state_dim is 27, expected 28" in data["last_reload_error"]
        assert data["model"]["sha256"] == first_sha
        assert [w["name"] for w in data["live_workers"]] == ["w1"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))
