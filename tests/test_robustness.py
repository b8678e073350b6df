"""The worker as a new user meets it: Redis keys deleted under it, Redis flushed,
background tasks that fail, misconfiguration, a worker without a model beside a
healthy one, outages, clean exits. Each case failed on the worker before the
core was reshaped (issue: "Worker core ... robustness")."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

import worker.heartbeat
from tests.conftest import make_settings, wait_for, write_model
from tests.servers import free_port
from worker.loop import Worker
from worker.metrics import Metrics
from worker.model import ModelManager
from worker.protocol import parse_result
from worker.reads import Read
from worker.server import serve
from worker.settings import ConfigError, Settings
from worker.state import ServerState

ROOT = Path(__file__).resolve().parent.parent
STATE = [0.05 * i for i in range(28)]


@asynccontextmanager
async def running(settings: Settings, redis: Redis | None = None) -> AsyncIterator[asyncio.Task[ServerState]]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, redis, stop=stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def add(redis: Redis, n: int, **extra: str) -> list[bytes]:
    return [
        await redis.xadd("statpair:states", {"state": json.dumps(STATE), "id": f"c{i}", **extra})
        for i in range(n)
    ]


async def results(redis: Redis, stream: str = "statpair:actions") -> list:
    return [parse_result(f) for _, f in await redis.xrange(stream)]


async def blocked_readers(redis: Redis) -> int:
    """Clients blocked in XREADGROUP right now (CLIENT LIST), the worker's among them."""
    return sum(
        1 for c in await redis.client_list() if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
    )


# -- counting: one answer point --------------------------------------------------------


def _entries(metrics: Metrics, error: str) -> float | None:
    labels = {"status": "ok", "error": ""} if error == "ok" else {"status": "error", "error": error}
    return metrics.registry.get_sample_value("statpair_entries_total", labels)


async def test_poison_answers_are_counted_in_the_metrics(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path, max_deliveries=3)
    write_model(s.model_dir / "a.pt")
    models = ModelManager(None, s.model_dir, False)
    await models.check()
    w = Worker(ServerState(s, fake_redis, models))
    metrics = Metrics()
    w.answerer.observers.append(metrics.observe_batch)
    await w.ensure_group()
    (eid,) = await add(fake_redis, 1)
    entries = (await fake_redis.xreadgroup(s.group, s.consumer, {"statpair:states": ">"}))[0][1]
    await w.handle(Read(entries, [0]), counts={eid: 3})
    (r,) = await results(fake_redis)
    assert r.error == "internal" and "each of 3 deliveries" in r.detail
    assert w.state.stats.results == {"internal": 1} and w.state.stats.dead_lettered == 1
    assert _entries(metrics, "internal") == 1  # was never counted: only the loop's batches were


async def test_entries_read_before_a_restart_are_answered_and_said(
    tmp_path: Path, fake_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that read three entries and died: restarted under the same name, it answers
    them first (XREADGROUP from 0), and says so in one line an operator can find."""
    s = make_settings(tmp_path)
    w = Worker(ServerState(s, fake_redis, ModelManager(None, s.model_dir, False)), burst=True)
    await w.ensure_group()
    ids = await add(fake_redis, 3)
    await fake_redis.xreadgroup(s.group, s.consumer, {"statpair:states": ">"}, count=3)  # then it died
    with caplog.at_level(logging.INFO, logger="worker.loop"):
        await w.run()
    assert sorted(r.entry_id for r in await results(fake_redis)) == sorted(i.decode() for i in ids)
    assert (await fake_redis.xpending("statpair:states", s.group))["pending"] == 0
    said = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert said == [
        f"answering 3 entries read by {s.consumer} and not acknowledged (before this worker started), "
        f"from {ids[0].decode()}"
    ]


async def test_an_entry_a_failed_batch_left_pending_is_said_as_such(
    tmp_path: Path, fake_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Not "before a restart": the re-read after a failed batch names that reason."""
    s = make_settings(tmp_path)
    w = Worker(ServerState(s, fake_redis, ModelManager(None, s.model_dir, False)), burst=True)
    await w.ensure_group()
    ids = await add(fake_redis, 2)
    real = w.process

    async def failing(entries: list, read_more: int = 0) -> list:
        if any(eid == ids[1] for eid, _ in entries):
            raise RuntimeError("simulated bug on one entry")
        return await real(entries, read_more)

    w.process = failing  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="worker.loop"):
        await w.run()
    said = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert said == [
        f"answering 1 entry read by {s.consumer} and not acknowledged (left pending when a batch failed), "
        f"from {ids[1].decode()}"
    ]


async def test_a_rerouted_result_is_counted_internal_not_ok(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    write_model(s.model_dir / "a.pt")
    models = ModelManager(None, s.model_dir, False)
    await models.check()
    await fake_redis.set("statpair:actions:oops", "a string, not a stream")
    await add(fake_redis, 1, reply_to="statpair:actions:oops")
    w = Worker(ServerState(s, fake_redis, models), burst=True)
    metrics = Metrics()
    w.answerer.observers.append(metrics.observe_batch)
    await w.run()
    (r,) = await results(fake_redis)
    assert r.error == "internal" and "could not be written" in r.detail
    assert w.state.stats.results == {"internal": 1}
    assert _entries(metrics, "internal") == 1 and _entries(metrics, "ok") in (None, 0.0)


# -- keys deleted, Redis flushed, background tasks that fail -----------------------------


@pytest.mark.integration
async def test_states_stream_deleted_while_blocked(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    s = make_settings(tmp_path, redis_url=redis_url, block_ms=2000)
    write_model(s.model_dir / "a.pt")
    async with running(s) as task:
        await add(real_redis, 1)
        await wait_for(lambda: _count(real_redis, 1), what="the first answer")
        await wait_for(lambda: blocked_readers(real_redis), what="the worker to block on the stream")
        await real_redis.delete("statpair:states")  # UNBLOCKED the stream key no longer exists
        await wait_for(lambda: real_redis.exists("statpair:states"), what="the group to be recreated")
        await add(real_redis, 2)
        await wait_for(lambda: _count(real_redis, 3), what="answers after the delete")
        assert not task.done()
    assert [r.status for r in await results(real_redis)] == ["ok"] * 3


@pytest.mark.integration
async def test_stream_flushed_between_claim_and_forgetting_departed(
    tmp_path: Path, real_redis: Redis
) -> None:
    """Redis flushed in the middle of a reclaim pass, after XAUTOCLAIM and before XINFO
    CONSUMERS: Redis answers "no such key" (not NOGROUP); the worker takes it as nobody to
    forget, and its next read recreates the group, rather than ending (found in CI: the
    flushed-Redis test ended the worker)."""
    s = make_settings(tmp_path)
    w = Worker(ServerState(s, real_redis, ModelManager(None, s.model_dir, False)))
    await w.ensure_group()
    real_claim = w.recovery.claim

    async def flushed_after(*args: object, **kw: object) -> AsyncIterator[list]:
        async for entries in real_claim():
            yield entries
        await real_redis.flushall()

    w.recovery.claim = flushed_after  # type: ignore[method-assign]
    assert await w._turn() is True
    assert [g["name"] for g in await real_redis.xinfo_groups("statpair:states")] == [s.group.encode()]
    w.recovery.claim = real_claim  # type: ignore[method-assign]
    await add(real_redis, 1)
    for _ in range(3):  # our own (empty) history first, then the new entry
        await w._turn()
    assert await real_redis.xlen("statpair:actions") == 1  # answered (model_unavailable: no model here)


async def _count(redis: Redis, n: int) -> bool:
    return await redis.xlen("statpair:actions") >= n


@pytest.mark.integration
@pytest.mark.slow
async def test_flushed_redis_the_heartbeat_comes_back(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    """A Redis restarted without persistence is a flushed one: the worker, its
    heartbeat (with metrics on: it samples the group) and its group come back."""
    s = make_settings(
        tmp_path, redis_url=redis_url, metrics_port=free_port(), metrics_host="127.0.0.1", heartbeat_ttl_s=2
    )
    write_model(s.model_dir / "a.pt")
    key = "statpair:workers:w1"
    async with running(s) as task:
        await wait_for(lambda: real_redis.exists(key), what="the heartbeat")
        await real_redis.flushall()
        await wait_for(lambda: real_redis.exists(key), what="the heartbeat after FLUSHALL")
        await add(real_redis, 1)
        await wait_for(lambda: _count(real_redis, 1), what="an answer after FLUSHALL")
        # Twice more, so a heartbeat that died after writing its hash would show.
        for _ in range(2):
            await real_redis.delete(key)
            await wait_for(lambda: real_redis.exists(key), what="the heartbeat refreshed")
        assert not task.done()


async def test_a_second_worker_of_the_same_name_is_refused_and_leaves_the_first_alone(
    tmp_path: Path, fake_redis: Redis
) -> None:
    """Two workers of one CONSUMER name would take each other's pending entries for their
    own and answer them twice: the second sees the first's heartbeat kept alive and exits
    with a setting to fix, without deleting the first's heartbeat or consumer."""
    s = make_settings(tmp_path, heartbeat_ttl_s=2)
    write_model(s.model_dir / "a.pt")
    key = "statpair:workers:w1"
    async with running(s, fake_redis) as first:
        await wait_for(lambda: fake_redis.exists(key), what="the first worker's heartbeat")
        mine = await fake_redis.hget(key, "instance")
        with pytest.raises(ConfigError, match=r"CONSUMER=w1 is taken by a live worker \(host .+, pid \d+\)"):
            await serve(s, fake_redis)
        assert await fake_redis.hget(key, "instance") == mine  # not deleted, not overwritten
        await add(fake_redis, 1)
        await wait_for(lambda: _count(fake_redis, 1), what="the first worker still answering")
        assert not first.done()


async def test_a_heartbeat_nobody_keeps_alive_does_not_hold_the_name(
    tmp_path: Path, fake_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed under its name leaves its heartbeat until the TTL: restarted under
    the same name (a container: same host, pid 1), it takes the name over."""
    s = make_settings(tmp_path, heartbeat_ttl_s=2)
    write_model(s.model_dir / "a.pt")
    key = "statpair:workers:w1"
    await fake_redis.hset(
        key, mapping={"name": "w1", "host": "h", "pid": "1", "instance": "dead", "beat_ms": "1"}
    )
    await fake_redis.expire(key, 60)  # as if a beat had just set it: nobody refreshes it now
    await add(fake_redis, 1)
    with caplog.at_level(logging.INFO, logger="worker"):
        state = await serve(s, fake_redis, max_messages=1)
    assert state.stats.processed == 1
    assert "not kept alive: taking the name over" in caplog.text


@pytest.mark.parametrize(("value", "says"), [("-5", "-5 is below 0"), ("ten", "'ten' is not a whole number")])
def test_max_messages_is_a_count(value: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    import worker.cli

    with pytest.raises(SystemExit) as done:
        worker.cli.parse_args(["--max-messages", value])
    assert done.value.code == 2 and says in capsys.readouterr().err
    assert worker.cli.parse_args(["--max-messages", "0"]).max_messages == 0


async def test_stopped_before_redis_ever_answered_it_loads_nothing(tmp_path: Path) -> None:
    """A SIGTERM while start-up still waits for Redis: it stops there, rather than going on
    to load a model, publish it and leave a group it never joined."""
    s = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    write_model(s.model_dir / "a.pt")
    stop = asyncio.Event()
    stop.set()
    state = await serve(s, stop=stop)
    assert not state.models.any_loaded and state.stats.processed == 0


async def test_a_failing_background_task_is_restarted_loudly(
    tmp_path: Path, fake_redis: Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_settings(tmp_path, heartbeat_ttl_s=2)
    real_beat = worker.heartbeat.beat
    calls = 0

    async def flaky_beat(state: ServerState, metrics: Metrics | None = None) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("simulated bug in the heartbeat")
        await real_beat(state, metrics)

    monkeypatch.setattr(worker.heartbeat, "beat", flaky_beat)
    async with running(s, fake_redis):
        await wait_for(
            lambda: fake_redis.exists("statpair:workers:w1"), what="the heartbeat after its failure"
        )
    assert calls >= 2
    assert any(
        r.levelno == logging.ERROR and "background task heartbeat failed" in r.getMessage()
        for r in caplog.records
    )


# -- misconfiguration: one sentence, exit 2 -------------------------------------------


def _worker(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "STAT_PAIR", "MODEL_", "REDIS_", "METRICS_", "LOG_", "BLOCK_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "worker", "--max-messages", "0"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LOG_LEVEL": "verbose"}, ["LOG_LEVEL", "DEBUG, INFO"]),
        ({"REDIS_URL": "127.0.0.1:6379"}, ["REDIS_URL", "redis://"]),
        ({"STAT_PAIR_RL_JIT": "maybe"}, ["STAT_PAIR_RL_JIT", "1/true/yes/on"]),
        ({"REDIS_URL": "redis://user:hunter2@127.0.0.1:1/0", "BLOCK_MS": "5000"}, ["BLOCK_MS", "5 s"]),
        ({"REDIS_URL": "redis://:hunter2@127.0.0.1:1/0", "READ_COUNT": "lots"}, ["READ_COUNT", "integer"]),
        ({"SHARDS": "4"}, ["SHARDS and SERVE_SHARDS need REDIS_CLUSTER=1"]),
        (
            {"REDIS_CLUSTER": "1", "SHARDS": "4", "SERVE_SHARDS": "3-1"},
            ["SERVE_SHARDS='3-1'", "runs backwards"],
        ),
        ({"REDIS_CLUSTER": "1", "REDIS_URL": "redis://127.0.0.1:1/1"}, ["database '1'", "database 0 only"]),
        ({"REDIS_CLUSTER": "1", "REDIS_URL": "unix:///tmp/redis.sock"}, ["REDIS_CLUSTER=1", "TCP"]),
        ({"REDIS_URL": "redis://:hunter2@127.0.0.1:notaport/0"}, ["REDIS_URL", "port 'notaport'"]),
        ({"REDIS_URL": "redis://127.0.0.1:99999/0"}, ["REDIS_URL", "port '99999'"]),
        ({"REDIS_URL": "redis://127.0.0.1:1/abc"}, ["REDIS_URL", "database 'abc'"]),
        ({"SHUTDOWN_GRACE_S": "inf"}, ["SHUTDOWN_GRACE_S", "finite"]),
        # REDIS_URL at port 1 (nothing listens): were the check gone, no real server is reached.
        ({"STATES_STREAM": "", "REDIS_URL": "redis://127.0.0.1:1/0"}, ["STATES_STREAM", "must not be empty"]),
        ({"CONSUMER": " ", "REDIS_URL": "redis://127.0.0.1:1/0"}, ["CONSUMER", "must not be empty"]),
    ],
)
def test_misconfiguration_is_one_sentence_and_exit_2(env: dict[str, str], names: list[str]) -> None:
    out = _worker(env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in names), out.stderr
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://", "names no host"),
        ("redis://:hunter2@:1/0", "names no host"),
        ("unix://", "names no socket"),
    ],
)
def test_a_redis_url_without_a_host_is_refused(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """redis-py would take localhost:6379 quietly: another server than the one meant. In
    process, with serve() replaced, so that even a regression never reaches that server."""
    import worker.cli
    import worker.server

    def never(*args: object, **kw: object) -> None:
        raise AssertionError("the worker started")

    monkeypatch.setattr(worker.server, "serve", never)
    monkeypatch.setenv("REDIS_URL", url)
    assert worker.cli.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "REDIS_URL" in err and says in err, err
    assert "hunter2" not in err


@pytest.mark.integration
@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REDIS_CLUSTER": "1"}, "is not a cluster node (cluster mode is not enabled there)"),
        ({"USER": "nosuchuser"}, "refused REDIS_URL's user name and password"),
        ({"DB": "99"}, "names a database this Redis does not have"),
    ],
)
def test_a_redis_it_cannot_use_is_one_sentence(
    tmp_path: Path, redis_url: str, env: dict[str, str], says: str
) -> None:
    """A plain Redis named as a cluster node, or credentials Redis refuses: no retry
    cures either, so the worker says which setting to fix and exits 2 (not a traceback,
    not a retry loop)."""
    url = redis_url
    if env.pop("USER", None):
        url = redis_url.replace("redis://", "redis://nosuchuser:hunter2@")
    if db := env.pop("DB", None):
        url = url.rsplit("/", 1)[0] + f"/{db}" if url.count("/") > 2 else f"{url}/{db}"
        url = url.replace("redis://", "redis://:hunter2@")  # a password the server ignores: masked anyway
    out = _worker({"REDIS_URL": url, "MODEL_DIR": str(tmp_path), **env})
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("invalid configuration: ") and says in last, out.stderr
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout


@pytest.mark.integration
def test_metrics_port_in_use_is_one_sentence(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _worker(
            {
                "REDIS_URL": redis_url,
                "METRICS_PORT": str(port),
                "METRICS_HOST": "127.0.0.1",
                "MODEL_DIR": str(tmp_path),
            }
        )
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert f"METRICS_PORT {port} is already in use" in last and "Traceback" not in out.stderr


# -- a worker without a model beside a healthy one --------------------------------------


@pytest.mark.integration
async def test_a_worker_without_a_model_leaves_states_to_one_with(
    tmp_path: Path, real_redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.loop")
    good = make_settings(tmp_path / "good", redis_url=redis_url, consumer="good")
    write_model(good.model_dir / "a.pt")
    empty = make_settings(tmp_path / "empty", redis_url=redis_url, consumer="empty")
    async with running(good), running(empty) as lonely:
        await wait_for(
            lambda: real_redis.hget("statpair:workers:good", "model_sha256"),
            what="the healthy worker's heartbeat",
        )
        await wait_for(
            lambda: "leaving the states to it" in caplog.text, what="the empty worker to see the healthy one"
        )
        for i in range(40):  # one at a time: both workers are waiting for each
            await real_redis.xadd("statpair:states", {"state": json.dumps(STATE), "id": f"s{i}"})
            await wait_for(lambda i=i: _count(real_redis, i + 1), what=f"answer {i}")
    out = await results(real_redis)
    assert [r.status for r in out] == ["ok"] * 40 and {r.worker for r in out} == {"good"}
    assert (await lonely).stats.processed == 0


@pytest.mark.integration
async def test_a_worker_alone_without_a_model_answers_model_unavailable(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url=redis_url)
    async with running(s):
        await add(real_redis, 3)
        await wait_for(lambda: _count(real_redis, 3), what="three answers")
    assert {r.error for r in await results(real_redis)} == {"model_unavailable"}


# -- outages and exits ----------------------------------------------------------------


async def test_an_outage_is_logged_once_per_retry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    caplog.set_level(logging.DEBUG)

    def retries() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING and "Redis unavailable" in r.getMessage()
        ]

    async with running(s):
        await wait_for(lambda: len(retries()) >= 4, timeout=60, what="four retries")
    numbers = [m.split("; retry ")[1].split()[0] for m in retries()]
    assert numbers == [str(i) for i in range(1, len(numbers) + 1)], retries()  # no line twice


@pytest.mark.integration
async def test_a_clean_exit_leaves_the_group_only_when_nothing_is_pending(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url=redis_url)
    write_model(s.model_dir / "a.pt")
    await add(real_redis, 3)
    await serve(s, max_messages=3)
    assert await real_redis.xinfo_consumers("statpair:states", s.group) == []
    # One entry pending for "w2" and a bounded run that reads nothing: it stays.
    await add(real_redis, 1)
    await real_redis.xreadgroup(s.group, "w2", {"statpair:states": ">"}, count=1)
    await serve(make_settings(tmp_path, redis_url=redis_url, consumer="w2"), max_messages=0)
    consumers = await real_redis.xinfo_consumers("statpair:states", s.group)
    assert [(c["name"], c["pending"]) for c in consumers] == [(b"w2", 1)]


async def test_departed_consumers_are_forgotten_but_not_those_holding_entries(
    tmp_path: Path, fake_redis: Redis
) -> None:
    s = make_settings(tmp_path, claim_idle_ms=60_000)
    w = Worker(ServerState(s, fake_redis, ModelManager(None, s.model_dir, False)))
    await w.ensure_group()
    await add(fake_redis, 2)
    await fake_redis.xreadgroup(s.group, "holder", {"statpair:states": ">"}, count=1)
    await fake_redis.xreadgroup(s.group, "departed", {"statpair:states": ">"}, count=1)
    (eid,) = [e for e, _ in (await fake_redis.xrange("statpair:states"))[1:]]
    await fake_redis.xack("statpair:states", s.group, eid)  # "departed" answered its entry, then died
    await fake_redis.xreadgroup(s.group, "fresh", {"statpair:states": ">"}, count=1)  # reads nothing
    # A live worker on a quiet stream: idle as far as Redis 7.0 says, but its heartbeat is there.
    await fake_redis.xreadgroup(s.group, "alive", {"statpair:states": ">"}, count=1)
    await fake_redis.hset(f"{s.heartbeat_prefix}alive", mapping={"name": "alive"})
    assert await w.recovery.forget_departed() == []  # nobody idle long enough yet
    # Two minutes later (XCLAIM with IDLE makes the holder's entry old; consumers' idle
    # times are faked by patching what XINFO CONSUMERS reports).
    real = fake_redis.xinfo_consumers

    async def aged(*args: object, **kw: object) -> list[dict[str, object]]:
        return [{**c, "idle": 120_000} for c in await real(*args, **kw)]

    fake_redis.xinfo_consumers = aged  # type: ignore[method-assign]
    assert sorted(await w.recovery.forget_departed()) == ["departed", "fresh"]
    left = await real("statpair:states", s.group)
    assert sorted((c["name"], c["pending"]) for c in left) == [(b"alive", 0), (b"holder", 1)]


@pytest.mark.integration
async def test_the_states_stream_is_trimmed_of_what_every_group_acknowledged(
    tmp_path: Path, real_redis: Redis
) -> None:
    """Without trimming the states stream only grows. The reclaim pass trims what every
    group is done with, and never an entry a group still needs: pending, or not yet read."""
    s = make_settings(tmp_path)
    w = Worker(ServerState(s, real_redis, ModelManager(None, s.model_dir, False)))
    await w.ensure_group()
    ids = await add(real_redis, 3000)
    read = await real_redis.xreadgroup(s.group, "w1", {"statpair:states": ">"}, count=2500)
    got = [eid for eid, _ in read[0][1]]
    await real_redis.xack("statpair:states", s.group, *got[:2000])  # 500 still pending
    await w.recovery.trim_answered()
    left = [eid for eid, _ in await real_redis.xrange("statpair:states")]
    assert len(left) < 3000 and ids[2000] in left  # trimmed, up to the oldest pending entry at most
    assert left == ids[ids.index(left[0]) :]  # what is left is a whole tail: nothing needed went
    # A second group that has read nothing yet: nothing more may go.
    await real_redis.xgroup_create("statpair:states", "audit", id="0")
    before = await real_redis.xlen("statpair:states")
    await real_redis.xack("statpair:states", s.group, *got[2000:])
    await w.recovery.trim_answered()
    assert await real_redis.xlen("statpair:states") == before


async def test_trimming_survives_the_pending_entries_being_acknowledged_meanwhile(
    tmp_path: Path, fake_redis: Redis
) -> None:
    """XINFO GROUPS said an entry was pending; by the XPENDING a moment later it was
    acknowledged (min None): the pass trims up to the last delivered entry, no crash."""
    s = make_settings(tmp_path)
    w = Worker(ServerState(s, fake_redis, ModelManager(None, s.model_dir, False)))
    await w.ensure_group()
    await add(fake_redis, 5)
    await fake_redis.xreadgroup(s.group, "w1", {"statpair:states": ">"}, count=5)
    real = fake_redis.xpending

    async def acknowledged_meanwhile(*args: object, **kw: object) -> dict[str, object]:
        return {**(await real(*args, **kw)), "pending": 0, "min": None, "max": None}

    fake_redis.xpending = acknowledged_meanwhile  # type: ignore[method-assign]
    await w.recovery.trim_answered()  # did not raise
    assert await fake_redis.xlen("statpair:states") <= 5


@pytest.mark.integration
async def test_a_destroyed_group_is_recreated_without_answering_again(
    tmp_path: Path, real_redis: Redis, redis_url: str
) -> None:
    s = make_settings(tmp_path, redis_url=redis_url, block_ms=2000)
    write_model(s.model_dir / "a.pt")
    async with running(s):
        await add(real_redis, 3)
        await wait_for(lambda: _count(real_redis, 3), what="three answers")
        await wait_for(lambda: blocked_readers(real_redis), what="the worker to block on the stream")
        await real_redis.xgroup_destroy("statpair:states", s.group)
        await add(real_redis, 2)
        await wait_for(lambda: _count(real_redis, 5), what="the two new answers")
    ids = [r.entry_id for r in await results(real_redis)]
    assert len(ids) == len(set(ids)) == 5  # the first three were not answered again
