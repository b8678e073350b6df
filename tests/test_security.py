"""Least privilege and TLS: a worker and strategies running under exactly the ACL
users docs/operations.md documents, on one redis-server and on a cluster, and a
worker and client over rediss:// with a throwaway CA."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from tests.conftest import CONTRACT, make_settings, wait_for, write_model
from tests.helpers import serving
from tests.servers import LocalRedisCluster, RedisProcess, make_tls_files, start_acl_redis, start_tls_redis
from worker.client import ActionClient
from worker.prices import PriceClient
from worker.server import serve
from worker.settings import ConfigError

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
PASSWORDS = {
    "WORKER_PASSWORD": "w-secret",
    "STRATEGY_A_PASSWORD": "a-secret",
    "STRATEGY_B_PASSWORD": "b-secret",
}


def documented_users() -> list[str]:
    """The ACL lines of docs/operations.md, passwords filled in, plus a second strategy
    made from the first by renaming it (as the doc says each strategy is)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("<!-- acl-users:")
    block = text[start : text.index("<!-- /acl-users -->", start)].split("```\n", 1)[1].split("```", 1)[0]
    rules = [line.removeprefix("user ") for line in block.strip().splitlines()]
    strategy_b = next(r for r in rules if r.startswith("strategy-a ")).replace("strategy-a", "strategy-b")
    rules.append(strategy_b.replace("STRATEGY_A_PASSWORD", "STRATEGY_B_PASSWORD"))
    for name, password in PASSWORDS.items():
        rules = [r.replace(name, password) for r in rules]
    return rules


async def _strategies_are_confined(
    url_a: str, url_b: str, admin: Redis | RedisCluster, cluster: bool, shards: int = 1
) -> None:
    """Strategy A gets its actions (raw states, prices); B can neither read A's replies
    nor write where workers write."""
    kw = {"cluster": cluster, "shards": shards, "timeout": 30}
    async with ActionClient(url_a, strategy="strategy-a", **kw) as a:  # type: ignore[arg-type]
        await wait_for(lambda: admin.hexists("statpair:contracts", "*"), timeout=30, what="the contract")
        r = await a.act(np.zeros(28), pair="X/Y", contract=CONTRACT.id)
        assert r.status == "ok" and r.contract == CONTRACT.id
        many = await a.act_many([np.zeros(28)] * 4, ["X/Y", "U/V", "K/L", "M/N"])
        assert all(not isinstance(x, Exception) for x in many)
        assert (await PriceClient(a).fetch_contract("X/Y")) == CONTRACT
        async with ActionClient(url_b, strategy="strategy-b", **kw) as b:  # type: ignore[arg-type]
            await b._discover()
            with pytest.raises(NoPermissionError):
                await b.redis.xrange(a.reply_stream)  # another strategy's answers
            with pytest.raises(NoPermissionError):
                await b.redis.xadd(a.reply_stream, {"status": "ok", "action": "1"})
            with pytest.raises(NoPermissionError):
                await b.redis.xadd("statpair:actions", {"status": "ok"})  # the results stream
            with pytest.raises(NoPermissionError):
                await b.redis.xadd("statpair:control", {"cmd": "reload"})
            with pytest.raises(NoPermissionError):
                await b.redis.xrange("statpair:states")  # other strategies' states: write-only
            with pytest.raises(NoPermissionError):
                await b.redis.xadd("statpair:states", {"state": "[1]"})  # the shared stream: not B's
            if not cluster:
                a_states = "statpair:states:strategy-a"
                with pytest.raises(NoPermissionError):
                    await b.redis.xtrim(a_states, maxlen=0)  # A's states: B cannot empty them
                with pytest.raises(NoPermissionError):
                    await b.redis.delete(a_states)
                with pytest.raises(NoPermissionError):
                    await b.redis.xadd(a_states, {"state": "[1]"}, id="18446744073709551615-0")


async def test_worker_and_strategies_under_the_documented_acls(tmp_path: Path) -> None:
    server = start_acl_redis(tmp_path / "redis", documented_users(), admin_password="admin-secret")
    try:
        s = make_settings(
            tmp_path,
            redis_url=server.url_for("statpair-worker", "w-secret"),
            metrics_port=None,
            claim_interval_s=0.05,
            strategies="strategy-a,strategy-b",
        )
        write_model(s.model_dir / "m.pt")
        admin = Redis(**server.client_kwargs(), username="default", password="admin-secret")
        async with serving(s) as worker:
            await _strategies_are_confined(
                server.url_for("strategy-a", "a-secret"),
                server.url_for("strategy-b", "b-secret"),
                admin,
                False,
            )
            # The worker's other duties work under its user too: control, heartbeat.
            await admin.xadd("statpair:control", {"cmd": "status", "id": "acl"})
            await wait_for(lambda: admin.xlen("statpair:control:replies"), what="the status reply")
            assert await admin.exists("statpair:workers:w1")
            # Reclaim passes (claiming, forgetting departed consumers, trimming the states
            # stream) ran under the worker's user, and Redis denied it nothing.
            await wait_for(lambda: worker.state.stats.reclaim_passes >= 3, what="reclaim passes")
            denied = [e for e in await admin.execute_command("ACL", "LOG") if b"statpair-worker" in e]
            assert denied == []
        # ... and so does leaving the group on a clean exit.
        assert await admin.xinfo_consumers("statpair:states", s.group) == []
        await admin.aclose()
    finally:
        server.stop()


@pytest.fixture
def acl_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(tmp_path / "cluster", primaries=3, replicas=0) as cluster:
        cluster.apply_acl(documented_users())
        yield cluster


@pytest.mark.slow
async def test_worker_and_strategies_under_the_acls_on_a_cluster(
    tmp_path: Path, acl_cluster: LocalRedisCluster
) -> None:
    url = acl_cluster.url.replace("redis://", "redis://statpair-worker:w-secret@")
    s = make_settings(
        tmp_path, redis_url=url, redis_cluster=True, shards=4, strategies="strategy-a,strategy-b"
    )
    write_model(s.model_dir / "m.pt")
    admin = RedisCluster(**acl_cluster.client_kwargs())
    await admin.initialize()
    try:
        async with serving(s):
            await _strategies_are_confined(
                acl_cluster.url.replace("redis://", "redis://strategy-a:a-secret@"),
                acl_cluster.url.replace("redis://", "redis://strategy-b:b-secret@"),
                admin,
                True,
                shards=4,
            )
        # A wrong password is a setting to fix, said in one sentence, not a retry loop.
        wrong = make_settings(
            tmp_path / "wrong",
            redis_url=acl_cluster.url.replace("redis://", "redis://statpair-worker:nope@"),
            redis_cluster=True,
            shards=4,
        )
        with pytest.raises(ConfigError, match="refused REDIS_URL's user name and password"):
            await serve(wrong)
    finally:
        await admin.aclose()


async def test_worker_and_client_over_tls(tmp_path: Path) -> None:
    server: RedisProcess = start_tls_redis(tmp_path / "tls")
    try:
        assert server.url.startswith("rediss://") and server.tls is not None
        ca = server.tls.ca
        s = make_settings(tmp_path, redis_url=server.url, redis_ca_file=ca)
        write_model(s.model_dir / "m.pt")
        async with serving(s), ActionClient(server.url, ca_file=str(ca), timeout=30) as client:
            r = await client.act(np.zeros(28))
            assert r.status == "ok"
        # Without the CA the server's certificate is refused.
        plain = Redis.from_url(server.url, socket_connect_timeout=5)
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            await plain.ping()
        await plain.aclose()
    finally:
        server.stop()


def test_make_tls_files_gives_a_ca_and_a_server_pair(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    assert files.ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in files.key.read_text()


def test_the_worker_user_cannot_run_admin_commands(tmp_path: Path) -> None:
    server = start_acl_redis(tmp_path / "redis", documented_users(), admin_password="admin-secret")
    try:
        worker = Redis.from_url(server.url_for("statpair-worker", "w-secret"))

        async def check() -> None:
            with pytest.raises(NoPermissionError):
                await worker.flushall()
            with pytest.raises((NoPermissionError, ResponseError)):
                await worker.set("elsewhere", "x")
            await worker.aclose()

        asyncio.run(check())
    finally:
        server.stop()
