"""The test servers issue 16 builds on: a Redis Cluster (with and without replicas,
with a failover), a TLS-only redis-server and ACL users, each checked with redis-py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterException

from tests.servers import (
    LocalRedisCluster,
    RedisProcess,
    TlsFiles,
    apply_acl,
    key_slot,
    make_tls_files,
    start_acl_redis,
    start_tls_redis,
)

pytestmark = pytest.mark.integration

# The worker's publish+ack in miniature: results and acks in one call, all keys on one slot.
PUBLISH_ACK = """
local id = redis.call('XADD', KEYS[2], '*', 'result', ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return id
"""

WORKER_RULES = [
    "worker on >worker-pw resetkeys ~statpair:* resetchannels -@all +xreadgroup +xadd +xack +ping"
]


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("cluster3"), primaries=3, replicas=0)
    yield cluster
    cluster.stop()


@pytest.fixture
async def cluster_client(cluster3: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(**cluster3.client_kwargs())
    await client.initialize()  # before register_script (redis-py#3935)
    await client.flushall()
    yield client
    await client.aclose()


def test_cluster_forms_with_every_slot_on_one_of_three_primaries(cluster3: LocalRedisCluster) -> None:
    slots = cluster3.slot_map()
    assert slots[0][0] == 0 and slots[-1][1] == 16383
    assert all(slots[i][1] + 1 == slots[i + 1][0] for i in range(len(slots) - 1))
    assert {port for _, _, port in slots} == set(cluster3.ports)
    # One tag, one slot: a shard's streams live together; different tags spread out.
    assert key_slot("statpair:{3}:states") == key_slot("statpair:{3}:dead")
    owners = {cluster3.primary_for(f"statpair:{{{shard}}}:states").port for shard in range(12)}
    assert len(owners) == 3


async def test_cluster_client_streams_and_script_on_one_hash_tag(
    cluster3: LocalRedisCluster, cluster_client: RedisCluster
) -> None:
    states, actions = "statpair:{7}:states", "statpair:{7}:actions"
    await cluster_client.xgroup_create(states, "workers", id="0", mkstream=True)
    sent = await cluster_client.xadd(states, {"pair": "A/B", "z": "1.5"})
    read = await cluster_client.xreadgroup("workers", "w1", {states: ">"}, count=10, block=100)
    assert read[0][1][0][0] == sent
    script = cluster_client.register_script(PUBLISH_ACK)
    result_id = await script(keys=[states, actions], args=["workers", "0.25", sent])
    assert (await cluster_client.xrange(actions))[0][0] == result_id
    assert (await cluster_client.xpending(states, "workers"))["pending"] == 0
    # The stream is really on the node the launcher names for its slot.
    owner = cluster3.primary_for(states)
    assert owner.admin().exists(states) == 1
    # Keys of two slots in one script call are refused before anything is sent.
    with pytest.raises(RedisClusterException, match="same key slot"):
        await script(keys=[states, "statpair:{8}:actions"], args=["workers", "0", sent])


@pytest.mark.slow
async def test_client_follows_a_failover_after_a_primary_is_killed(tmp_path: Path) -> None:
    cluster = LocalRedisCluster(tmp_path, primaries=3, replicas=1)
    client = RedisCluster(**cluster.client_kwargs())
    try:
        await client.initialize()
        stream = "statpair:{1}:states"
        before = [await client.xadd(stream, {"n": str(i)}) for i in range(5)]
        owner = client.get_node_from_key(stream)
        assert owner is not None
        # WAIT on the owner: the replica holds all five before the primary dies.
        assert await client.execute_command("WAIT", 1, 2000, target_nodes=owner) == 1
        old = cluster.primary_for(stream)
        new = cluster.kill_primary(stream)
        assert new is not old and not old.alive()

        deadline = time.monotonic() + 30
        while True:  # bounded: the deadline
            try:
                after = await client.xadd(stream, {"n": "after"})
                break
            except (redis.ConnectionError, redis.TimeoutError, ClusterDownError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        ids = [entry_id for entry_id, _ in await client.xrange(stream)]
        assert ids == [*before, after]
        assert new.admin().xlen(stream) == 6
    finally:
        await client.aclose()
        cluster.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[RedisProcess]:
    server = start_tls_redis(tmp_path_factory.mktemp("tls-redis"), tls_files)
    yield server
    server.stop()


async def test_tls_redis_needs_the_throwaway_ca(tls_redis: RedisProcess, tls_files: TlsFiles) -> None:
    assert tls_redis.url.startswith("rediss://127.0.0.1:")
    client = Redis.from_url(tls_redis.url, ssl_ca_certs=str(tls_files.ca))
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    untrusting = Redis.from_url(tls_redis.url, socket_connect_timeout=2)
    try:
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.ping()
    finally:
        await untrusting.aclose()


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_acl_redis(tmp_path_factory.mktemp("acl-redis"), WORKER_RULES, admin_password="admin-pw")
    yield server
    server.stop()


async def test_acl_file_user_gets_only_its_commands_and_keys(acl_redis: RedisProcess) -> None:
    worker = Redis.from_url(acl_redis.url_for("worker", "worker-pw"))
    # No retries: redis-py 8 retries a refused AUTH with backoff (~3.5 s) by default.
    anonymous = Redis(**acl_redis.client_kwargs(), retry=Retry(NoBackoff(), 0))
    try:
        assert await worker.xadd("statpair:states", {"a": "1"})
        with pytest.raises(redis.exceptions.NoPermissionError, match="keys"):
            await worker.xadd("other:states", {"a": "1"})
        with pytest.raises(redis.exceptions.NoPermissionError, match="'xrange' command"):
            await worker.xrange("statpair:states")
        with pytest.raises(redis.AuthenticationError):
            await anonymous.ping()  # the default user has a password here
    finally:
        await worker.aclose()
        await anonymous.aclose()


async def test_acl_setuser_rules_are_applied_and_enforced(acl_redis: RedisProcess) -> None:
    apply_acl(acl_redis.admin(), ["reader on >reader-pw resetkeys %R~statpair:reply:{c1}* -@all +xread"])
    reader = Redis.from_url(acl_redis.url_for("reader", "reader-pw"))
    try:
        acl_redis.admin().xadd("statpair:reply:{c1}", {"ok": "1"})
        acl_redis.admin().xadd("statpair:reply:{c2}", {"ok": "1"})
        assert len(await reader.xread({"statpair:reply:{c1}": "0"})) == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            await reader.xread({"statpair:reply:{c2}": "0"})  # another client's replies
        with pytest.raises(redis.exceptions.NoPermissionError):
            await reader.xadd("statpair:reply:{c1}", {"forged": "1"})  # read-only key pattern
    finally:
        await reader.aclose()


@pytest.mark.slow
async def test_tls_cluster_with_an_acl_user(tmp_path: Path) -> None:
    cluster = LocalRedisCluster(tmp_path / "cluster", tls=make_tls_files(tmp_path / "tls"))
    # A cluster client also needs CLUSTER SLOTS (topology) and COMMAND (key positions).
    cluster.apply_acl(
        [WORKER_RULES[0] + " +cluster|slots +command", WORKER_RULES[0].replace("worker", "bare", 1)]
    )
    assert cluster.tls is not None
    node = cluster.live_nodes[0]
    client = RedisCluster.from_url(node.url_for("worker", "worker-pw"), ssl_ca_certs=str(cluster.tls.ca))
    bare = RedisCluster.from_url(node.url_for("bare", "worker-pw"), ssl_ca_certs=str(cluster.tls.ca))
    try:
        assert node.url.startswith("rediss://")
        for shard in range(6):  # several slots, so several nodes
            assert await client.xadd(f"statpair:{{{shard}}}:states", {"a": "1"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.xadd("other:{0}:states", {"a": "1"})
        # redis-py reports a refused CLUSTER SLOTS as "Cluster mode is not enabled".
        with pytest.raises(RedisClusterException, match="Cluster mode is not enabled"):
            await bare.initialize()
    finally:
        await client.aclose()
        await bare.aclose()
        cluster.stop()
