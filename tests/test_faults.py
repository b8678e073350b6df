"""What an adversary found (issue 23), each against a real redis-server: a full Redis
(maxmemory, noeviction) acknowledges nothing it could not answer, and a worker waits
for writes to come back; the group recreated after its stream vanished starts at an id
the stream has; an evicting memory policy is refused; ages are measured on Redis's clock;
entries of 25 MB cannot take a worker down; replies stay with their strategy and expire."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis

from tests.conftest import make_settings, wait_for, write_model
from tests.helpers import serving
from tests.servers import start_redis

pytestmark = pytest.mark.integration

STATE = [0.05 * i for i in range(28)]
F32 = np.asarray(STATE, "<f4").tobytes()


@pytest.fixture
def server(tmp_path: Path):
    """A redis-server of this test's own (its memory settings are the test's to change)."""
    executor = start_redis(tmp_path / "redis-data")
    yield executor
    if executor.running():
        executor.stop()


def url_of(server) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


async def produce(redis: Redis, n: int, stream: str = "statpair:states", chunk: int = 500) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, chunk):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(n, start + chunk)):
            pipe.xadd(stream, {"state_f32": F32, "id": f"s{i}"})
        ids += [x.decode() for x in await pipe.execute()]
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


async def acknowledged_without_answer(redis: Redis, ids: list[str]) -> list[str]:
    """Entries the group delivered and acknowledged that have no result: lost states."""
    groups = await redis.xinfo_groups("statpair:states")
    if not groups:
        return []
    last = groups[0]["last-delivered-id"].decode()
    delivered = [i for i in ids if _key(i) <= _key(last)]
    pending = {
        row["message_id"].decode()
        for row in await redis.xpending_range("statpair:states", "statpair-workers", "-", "+", len(ids) + 10)
    }
    got = await answered(redis)
    return [i for i in delivered if i not in pending and not got[i]]


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def fill_up(redis: Redis, headroom: int = 0) -> None:
    """maxmemory at what Redis uses now (plus ``headroom`` bytes), never evicting: writes
    that add data are refused (OOM) once the headroom is used up."""
    used = int((await redis.info("memory"))["used_memory"])
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", str(used + headroom))


# -- 1. Redis full --------------------------------------------------------------------


async def test_a_redis_that_fills_up_mid_run_acknowledges_only_what_it_answered(
    tmp_path: Path, server, caplog: pytest.LogCaptureFixture
) -> None:
    """3000 states queued; Redis has room for the answers of a few hundred. Before, every
    entry of a batch whose XADDs Redis refused was acknowledged all the same (3000 of 3000
    lost). Now: none acknowledged without its result, the worker says so once and stops
    reading, /readyz and cmd=status say why; room again, and every state is answered once."""
    redis = Redis.from_url(url_of(server))
    ids = await produce(redis, 3000)
    await redis.xgroup_create("statpair:states", "statpair-workers", id="0")
    await fill_up(redis, headroom=1_000_000)
    settings = make_settings(tmp_path, redis_url=url_of(server), read_count=128)
    write_model(settings.model_dir / "m.pt")
    caplog.set_level(logging.INFO)
    async with serving(settings) as srv:
        await wait_for(lambda: _stuck_or_done(srv, redis), timeout=30, what="the refusal (or the end)")
        assert await acknowledged_without_answer(redis, ids) == []
        assert srv.state.refusal.startswith("OOM command not allowed")
        got = sum((await answered(redis)).values())
        assert 0 < got < 3000  # some answered before Redis filled up, none since
        assert await acknowledged_without_answer(redis, ids) == []  # still, after a while
        await redis.config_set("maxmemory", "0")
        await wait_for(lambda: _all(redis, ids), timeout=60, what="every state answered")
        assert srv.state.refusal is None
    counts = await answered(redis)
    assert set(counts) == set(ids) and set(counts.values()) == {1}  # each once
    assert caplog.text.count("Redis refuses writes (OOM command not allowed") == 1
    assert caplog.text.count("Redis takes writes again after") == 1  # however often it flapped
    assert (await redis.xinfo_groups("statpair:states"))[0]["pending"] == 0
    await redis.aclose()


async def _stuck_or_done(srv, redis: Redis) -> bool:
    """The worker says Redis refuses writes, or the group has nothing left to deliver or
    acknowledge (what the worker did before: acknowledge every entry, answered or not)."""
    if getattr(srv.state, "refusal", None) is not None:
        return True
    (group,) = await redis.xinfo_groups("statpair:states")
    return group["lag"] == 0 and group["pending"] == 0


async def _all(redis: Redis, ids: list[str]) -> bool:
    return len(await answered(redis)) == len(ids)


async def test_a_worker_started_on_a_full_redis_waits_then_answers(
    tmp_path: Path, server, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the worker exited 1 at start (its consumer group could not be created)."""
    redis = Redis.from_url(url_of(server))
    ids = await produce(redis, 200)
    await fill_up(redis)
    settings = make_settings(tmp_path, redis_url=url_of(server))
    write_model(settings.model_dir / "m.pt")
    caplog.set_level(logging.INFO)
    async with serving(settings) as srv:
        await wait_for(lambda: srv.state.refusal is not None, timeout=30, what="the refusal")
        assert not (await answered(redis))
        await redis.config_set("maxmemory", "0")
        await wait_for(lambda: _all(redis, ids), timeout=60, what="every state answered")
    assert set((await answered(redis)).values()) == {1}
    assert "Redis refuses writes (OOM" in caplog.text
    await redis.aclose()


async def test_a_read_only_replica_is_waited_out_too(tmp_path: Path, server) -> None:
    """A worker pointed at a replica (READONLY: its group cannot be created, nothing can be
    read through it) waits, and serves once the server is promoted."""
    redis = Redis.from_url(url_of(server))
    primary = start_redis(tmp_path / "primary")
    try:
        await redis.replicaof("127.0.0.1", str(primary.port))
        settings = make_settings(tmp_path, redis_url=url_of(server))
        write_model(settings.model_dir / "m.pt")
        async with serving(settings) as srv:
            await wait_for(lambda: srv.state.refusal is not None, timeout=30, what="the refusal")
            assert srv.state.refusal.startswith("READONLY")
            await redis.replicaof("NO", "ONE")
            ids = await produce(redis, 50)
            await wait_for(lambda: _all(redis, ids), timeout=60, what="every state answered")
    finally:
        primary.stop()
    await redis.aclose()


# -- 3. a group recreated after its stream vanished -----------------------------------


async def test_a_stream_deleted_after_a_future_id_is_read_from_its_start(
    tmp_path: Path, server, caplog: pytest.LogCaptureFixture
) -> None:
    """A state XADDed with an id in the future, answered; then the stream deleted. Before,
    the group was recreated at that future id and the 1000 states that followed were never
    delivered (a restart did not help). Now it starts at an id the stream has."""
    redis = Redis.from_url(url_of(server))
    settings = make_settings(tmp_path, redis_url=url_of(server))
    write_model(settings.model_dir / "m.pt")
    caplog.set_level(logging.INFO)
    async with serving(settings):
        future = (
            await redis.xadd("statpair:states", {"state_f32": F32, "id": "f"}, id="9999999999999-0")
        ).decode()
        await wait_for(lambda: _all(redis, [future]), timeout=30, what="the future state's answer")
        await redis.delete("statpair:states")
        ids = await produce(redis, 1000)
        await wait_for(lambda: _count_at_least(redis, 1001), timeout=60, what="1000 answers after the delete")
    counts = await answered(redis)
    assert all(counts[i] == 1 for i in ids)
    assert "(the last entry this worker read, 9999999999999-0, is not in it any more)" in caplog.text
    await redis.aclose()


async def _count_at_least(redis: Redis, n: int) -> bool:
    return sum((await answered(redis)).values()) >= n


# -- 5. eviction ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
async def test_an_evicting_redis_is_refused_in_one_sentence(tmp_path: Path, server, policy: str) -> None:
    """With allkeys-lru Redis evicted the states stream, its pending entries, results and
    heartbeats (5-8 losses per 45k states). The worker now refuses such a Redis: exit 2."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    redis = Redis.from_url(url_of(server))
    await redis.config_set("maxmemory-policy", policy)
    write_model(tmp_path / "models" / "m.pt")
    env = {"REDIS_URL": url_of(server), "MODEL_DIR": str(tmp_path / "models"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("invalid configuration")]
    assert f"may evict keys (maxmemory-policy {policy})" in line and "ALLOW_EVICTION=1" in line
    env["ALLOW_EVICTION"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "worker", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ALLOW_EVICTION=1" in out.stderr  # served, and said what it risks
    await redis.aclose()


async def test_a_policy_changed_while_redis_was_away_is_refused_too(tmp_path: Path, server) -> None:
    redis = Redis.from_url(url_of(server))
    settings = make_settings(tmp_path, redis_url=url_of(server))
    write_model(settings.model_dir / "m.pt")
    from worker.server import Server
    from worker.settings import ConfigError

    stop = asyncio.Event()
    srv = Server(settings, stop=stop)
    task = asyncio.create_task(srv.serve())
    ids = await produce(redis, 5)
    await wait_for(lambda: _all(redis, ids), timeout=30, what="answers")
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    await redis.client_kill_filter(_type="normal", skipme=True)  # every connection dropped
    with pytest.raises(ConfigError, match="may evict keys"):
        await asyncio.wait_for(task, timeout=60)
    await redis.aclose()


# -- 7. clocks --------------------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [1.0, -1.0])
async def test_ages_are_measured_on_redis_clock(
    tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch, skew_s: float
) -> None:
    """This host's clock 1 s ahead of Redis's: before, 20 of 20 fresh states (ttl 500 ms)
    were answered expired. 1 s behind: 20 of 20 states already 700 ms old were acted on,
    queue_ms 0. Now both are judged on Redis's clock."""
    import time

    from worker.protocol import parse_result

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)
    redis = Redis.from_url(url_of(server))
    settings = make_settings(tmp_path, redis_url=url_of(server))
    write_model(settings.model_dir / "m.pt")
    sec, usec = await redis.time()
    old = int(sec) * 1000 + int(usec) // 1000 - 700
    pipe = redis.pipeline(transaction=False)
    for i in range(20):
        pipe.xadd("statpair:states", {"state_f32": F32, "id": f"old{i}", "ttl_ms": "500"}, id=f"{old}-{i}")
    await pipe.execute()
    async with serving(settings):
        fresh = []
        for i in range(20):
            fresh.append(
                (
                    await redis.xadd("statpair:states", {"state_f32": F32, "id": f"new{i}", "ttl_ms": "500"})
                ).decode()
            )
        await wait_for(lambda: _count_at_least(redis, 40), timeout=30, what="40 answers")
    results = [parse_result(f) for _, f in await redis.xrange("statpair:actions")]
    stale = [r for r in results if r.id.startswith("old")]
    new = [r for r in results if r.id.startswith("new")]
    assert [r.error for r in stale] == ["expired"] * 20
    assert [r.status for r in new] == ["ok"] * 20
    assert all(r.queue_ms < 500 for r in new)
    await redis.aclose()


# -- 2. and 6. strategies under their own ACL users -----------------------------------


@pytest.fixture
def acl_server(tmp_path: Path):
    from tests.servers import start_acl_redis
    from tests.test_security import documented_users

    server = start_acl_redis(tmp_path / "acl", documented_users(), admin_password="admin-secret")
    yield server
    server.stop()


async def test_a_strategy_that_jams_or_empties_its_stream_hurts_only_itself(
    tmp_path: Path, acl_server
) -> None:
    """Before, one shared stream: strategy B trimmed away 49 of A's 50 states, and an XADD of
    the largest id made every later XADD fail for every strategy. Now each has its own."""
    from redis.exceptions import NoPermissionError

    from worker.client import ActionClient

    admin = Redis(**acl_server.client_kwargs(), username="default", password="admin-secret")
    s = make_settings(
        tmp_path,
        redis_url=acl_server.url_for("statpair-worker", "w-secret"),
        strategies="strategy-a,strategy-b",
    )
    write_model(s.model_dir / "m.pt")
    url_a, url_b = acl_server.url_for("strategy-a", "a-secret"), acl_server.url_for("strategy-b", "b-secret")
    async with (
        serving(s),
        ActionClient(url_a, strategy="strategy-a", timeout=30) as a,
        ActionClient(url_b, strategy="strategy-b", timeout=30) as b,
    ):
        top = "18446744073709551615-18446744073709551615"
        await b.redis.xadd("statpair:states:strategy-b", {"state": "[1]"}, id=top)
        with pytest.raises(Exception, match="exhausted the last possible ID"):
            await b.act(np.zeros(28))  # B jammed itself
        for stream in ("statpair:states", "statpair:states:strategy-a"):
            with pytest.raises(NoPermissionError):
                await b.redis.xtrim(stream, maxlen=0)
            with pytest.raises(NoPermissionError):
                await b.redis.delete(stream)
        got = await a.act_many([np.zeros(28)] * 50)
        assert [r.status for r in got] == ["ok"] * 50  # A: all 50 answered
        await b.redis.delete("statpair:states:strategy-b")  # B empties its own: allowed, its business
        assert (await b.act(np.zeros(28))).status == "ok"  # and, unjammed, is served again
    await admin.aclose()


async def test_replies_stay_with_their_strategy_and_expire(tmp_path: Path, acl_server) -> None:
    """Before, strategy B made the worker write into A's reply namespace, and 5000 distinct
    reply_to values left 5000 keys with no expiry."""
    from worker.client import ActionClient
    from worker.protocol import parse_result

    admin = Redis(**acl_server.client_kwargs(), username="default", password="admin-secret")
    s = make_settings(
        tmp_path,
        redis_url=acl_server.url_for("statpair-worker", "w-secret"),
        strategies="strategy-a,strategy-b",
        reply_ttl_s=30,
    )
    write_model(s.model_dir / "m.pt")
    url_b = acl_server.url_for("strategy-b", "b-secret")
    async with serving(s), ActionClient(url_b, strategy="strategy-b", timeout=30) as b:
        pipe = b.redis.pipeline(transaction=False)
        for i in range(200):
            pipe.xadd(
                "statpair:states:strategy-b",
                {"state_f32": F32, "id": f"r{i}", "reply_to": f"statpair:actions:strategy-b:x{i}"},
            )
        pipe.xadd(
            "statpair:states:strategy-b",
            {"state_f32": F32, "id": "evil", "reply_to": "statpair:actions:strategy-a:inbox"},
        )
        await pipe.execute()
        await wait_for(
            lambda: admin.exists("statpair:actions:strategy-b:results"), timeout=30, what="B's refusal"
        )
        (refused,) = [parse_result(f) for _, f in await admin.xrange("statpair:actions:strategy-b:results")]
        assert refused.id == "evil" and refused.error == "invalid_state"
        assert "is not a stream name under 'statpair:actions:strategy-b:'" in refused.detail
        assert not await admin.exists("statpair:actions:strategy-a:inbox")
        await wait_for(
            lambda: admin.exists(*[f"statpair:actions:strategy-b:x{i}" for i in range(200)]),
            timeout=30,
            what="200 reply streams",
        )
        ttls = [await admin.ttl(f"statpair:actions:strategy-b:x{i}") for i in range(200)]
        assert all(0 < t <= 30 for t in ttls)  # each reply stream expires
        assert await admin.ttl("statpair:actions:strategy-b:results") == -1  # a default stream stays
    await admin.aclose()


# -- 4. oversized entries -------------------------------------------------------------

CAPPED = """
import resource, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from worker.cli import main
raise SystemExit(main(["--max-messages", sys.argv[2]]))
"""


@pytest.mark.slow
async def test_entries_of_25_mb_cannot_take_a_worker_down(tmp_path: Path, server) -> None:
    """Under a 1.5 GB address-space cap, 20 entries of 25 MB among 60 good states, and 5 more
    of 25 MB pending with a dead consumer past their delivery cap. Before, a read pulled every
    payload in: 7 of 7 workers died, 0 of 60 answered. Now every state is answered: the good
    ones ok, the big ones too_large, the pending ones dead-lettered by id, none read."""
    import subprocess
    import sys

    from tests.helpers import ROOT
    from worker.protocol import parse_result

    redis = Redis.from_url(url_of(server))
    big = b"x" * (25 << 20)
    await redis.xgroup_create("statpair:states", "statpair-workers", id="0", mkstream=True)
    ghosts = []
    for i in range(5):  # read by a consumer that died, delivered 5 times already
        ghosts.append((await redis.xadd("statpair:states", {"state": big, "id": f"ghost{i}"})).decode())
    await redis.xreadgroup("statpair-workers", "ghost", {"statpair:states": ">"}, count=5)
    await redis.xclaim("statpair:states", "statpair-workers", "ghost", 0, ghosts, idle=120_000, retrycount=5)
    ids = []
    for i in range(80):
        fields = {"state": big, "id": f"big{i}"} if i % 4 == 0 else {"state_f32": F32, "id": f"s{i}"}
        ids.append((await redis.xadd("statpair:states", fields)).decode())
    write_model(tmp_path / "models" / "m.pt")
    env = {"REDIS_URL": url_of(server), "MODEL_DIR": str(tmp_path / "models"), "PATH": "/usr/bin:/bin"}
    cap = str(int(1.5 * (1 << 30)))
    out = subprocess.run(
        [sys.executable, "-c", CAPPED, cap, "85"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = {r.id: r for r in (parse_result(f) for _, f in await redis.xrange("statpair:actions"))}
    assert len(results) == 85
    assert {results[f"big{i}"].error for i in range(0, 80, 4)} == {"too_large"}
    assert {results[f"s{i}"].status for i in range(80) if i % 4} == {"ok"}
    assert {results[f"ghost{i}"].error for i in range(5)} == {"internal"}  # poison: dead-lettered
    dead = [f for _, f in await redis.xrange("statpair:states:dead")]
    assert len(dead) == 25 and all(len(f.get(b"orig:state", b"")) < 100 for f in dead)  # not copied
    assert (await redis.xinfo_groups("statpair:states"))[0]["pending"] == 0
    await redis.aclose()


# -- 8. reload memory -------------------------------------------------------------------

RELOADS = """
import gc, sys
from pathlib import Path
import torch
from agent.actor import SACActor
from agent.checkpoint import save_checkpoint
from tests.conftest import CONTRACT
from worker.model import prepare

def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

torch.set_num_threads(1)
path = Path(sys.argv[1])
for seed in range(2):  # two files, served in turn: reloads of new weights, not a cache
    torch.manual_seed(seed)
    actor = SACActor(state_dim=28, hidden=(256, 256))
    save_checkpoint(actor, path.with_suffix(f".{seed}.pt"), {}, contract=CONTRACT)
served = []
for i in range(int(sys.argv[2])):
    served = [prepare(path.with_suffix(f".{i % 2}.pt"), jit=True)]  # the previous one let go
    gc.collect()
    if i == 9:
        first = rss_mb()
assert served[0].backend == "jit"
print(rss_mb() - first)
"""


@pytest.mark.slow
def test_torchscript_reloads_keep_memory_flat(tmp_path: Path) -> None:
    """+1.1 MB RSS a TorchScript reload of a 256-256 actor (264 → 815 MB after 500): each
    frozen module's weights stayed in the compilation unit every scripted class shares."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = subprocess.run(
        [sys.executable, "-c", RELOADS, str(tmp_path / "m"), "110"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    grown = float(out.stdout.strip().splitlines()[-1])
    assert grown < 20, f"RSS grew {grown:.1f} MB over 100 TorchScript reloads"
