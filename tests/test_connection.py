"""The worker's Redis connections: a send on a transport that closed under it (uvloop's
RuntimeError, seen in a Redis Cluster failover) fails as a ConnectionError, which every
retry loop handles; any other RuntimeError is left alone. The redis-py internals the
connection mixins rest on are checked by name, and a redis-py that no longer fits makes
the worker use redis-py's own classes with one warning."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import redis as redis_py
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker import connection
from worker.connection import ClosedTransportMixin, _fast, redis_client, upstream_misfit
from worker.retry import TRANSIENT, retrying

CLOSED = (
    "unable to perform operation on <TCPTransport closed=True reading=False 0x55e>; the handler is closed"
)


class Transport:
    """What redis-py (8.2) asks of a writer's transport before it writes: not closing yet
    (uvloop's transport closes between that check and the write)."""

    def is_closing(self) -> bool:
        return False


class Writer:
    """A stream writer whose transport is gone, as uvloop reports it."""

    def __init__(self, message: str) -> None:
        self.message, self.closed = message, False
        self.transport = Transport()

    def writelines(self, data: list[bytes]) -> None:
        raise RuntimeError(self.message)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


async def _send_on(message: str) -> tuple[BaseException, Writer, Connection]:
    conn = _fast(Connection)(host="127.0.0.1", port=1, socket_timeout=None)
    writer = Writer(message)
    conn._reader, conn._writer = object(), writer  # type: ignore[assignment]  # connected, then closed
    with pytest.raises(Exception) as caught:
        await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
    return caught.value, writer, conn  # type: ignore[return-value]


async def test_a_send_on_a_closed_transport_is_a_connection_error() -> None:
    exc, writer, conn = await _send_on(CLOSED)
    assert isinstance(exc, RedisConnectionError) and isinstance(exc, TRANSIENT)
    assert "the connection closed while sending" in str(exc)
    assert writer.closed and not conn.is_connected  # dropped: the retry reconnects


async def test_another_runtime_error_is_not_hidden() -> None:
    exc, _, _ = await _send_on("something else went wrong")
    assert type(exc) is RuntimeError and str(exc) == "something else went wrong"


async def test_a_send_on_a_connection_torn_down_meanwhile_is_a_connection_error() -> None:
    """Another task disconnects the connection while this one sends on it: redis-py writes to
    a writer that is None by then (an AttributeError that ended a worker in a failover test)."""
    conn = _fast(Connection)(host="127.0.0.1", port=1, socket_timeout=None)

    class TornDown(Writer):
        def writelines(self, data: list[bytes]) -> None:
            conn._writer = None  # the other task's disconnect
            raise AttributeError("'NoneType' object has no attribute 'writelines'")

    conn._reader, conn._writer = object(), TornDown("")  # type: ignore[assignment]
    with pytest.raises(RedisConnectionError, match="the connection closed while sending") as caught:
        await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
    assert isinstance(caught.value, TRANSIENT) and not conn.is_connected


async def test_an_attribute_error_on_a_live_connection_is_not_hidden() -> None:
    conn = _fast(Connection)(host="127.0.0.1", port=1, socket_timeout=None)

    class Broken(Writer):
        def writelines(self, data: list[bytes]) -> None:
            raise AttributeError("a bug of ours")

    conn._reader, conn._writer = object(), Broken("")  # type: ignore[assignment]
    with pytest.raises(AttributeError, match="a bug of ours"):
        await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)


def test_every_client_the_worker_builds_has_it() -> None:
    single = redis_client("redis://127.0.0.1:1/0")
    assert issubclass(single.connection_pool.connection_class, ClosedTransportMixin)
    cluster = redis_client("redis://127.0.0.1:1", cluster=True)
    assert isinstance(cluster, RedisCluster)
    assert issubclass(cluster.nodes_manager.connection_kwargs["connection_class"], ClosedTransportMixin)


async def test_wrong_credentials_are_not_retried() -> None:
    """redis-py's AuthenticationError is a ConnectionError, but no retry cures it."""
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise AuthenticationError("invalid username-password pair or user is disabled.")

    with pytest.raises(AuthenticationError):
        await retrying(op, asyncio.Event(), "reading states")
    assert calls == 1


def test_the_redis_py_internals_the_mixins_rest_on_are_there() -> None:
    """A redis-py release that changes them fails here, naming itself (the worker would fall
    back to redis-py's own classes, slower, with one warning)."""
    misfit = upstream_misfit()
    assert misfit is None, f"redis-py {redis_py.__version__} no longer fits worker/connection.py: {misfit}"
    single = redis_client("redis://127.0.0.1:1/0")
    cluster = redis_client("redis://127.0.0.1:1", cluster=True)
    assert connection.pool_misfit(single) is None, f"redis-py {redis_py.__version__}"
    assert connection.cluster_misfit(cluster) is None, f"redis-py {redis_py.__version__}"


@pytest.fixture
def misfit_redis_py(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A redis-py "99.0.0" whose send_packed_command takes another parameter."""

    async def send_packed_command(self: object, command: object, check_health: bool, timeout: float) -> None:
        raise AssertionError("never called")

    monkeypatch.setattr(redis_py, "__version__", "99.0.0")
    monkeypatch.setattr(AbstractConnection, "send_packed_command", send_packed_command)
    monkeypatch.setattr(connection, "_warned", [])
    upstream_misfit.cache_clear()
    yield
    upstream_misfit.cache_clear()


@pytest.mark.usefixtures("misfit_redis_py")
def test_an_upstream_that_no_longer_fits_is_named_and_the_worker_uses_its_own_classes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert upstream_misfit() == (
        "AbstractConnection.send_packed_command takes (self, command, check_health, timeout), "
        "not (self, command, check_health)"
    )
    with caplog.at_level(logging.WARNING, logger="worker.connection"):
        single = redis_client("redis://127.0.0.1:1/0")
        cluster = redis_client("redis://127.0.0.1:1", cluster=True)
        redis_client("redis://127.0.0.1:1/0")
    assert not issubclass(single.connection_pool.connection_class, ClosedTransportMixin)
    assert isinstance(cluster, RedisCluster)
    assert not issubclass(cluster.nodes_manager.connection_kwargs["connection_class"], ClosedTransportMixin)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # once a process, not once a client
    assert warnings[0].startswith("redis-py 99.0.0: AbstractConnection.send_packed_command takes")
    assert "uses redis-py's own connection classes" in warnings[0]


def test_a_cluster_client_without_its_connection_kwargs_is_named() -> None:
    class Bare:
        nodes_manager = None

    assert connection.cluster_misfit(Bare()) == "RedisCluster.connection_kwargs is gone"
    assert connection.pool_misfit(object()) == "a client's connection_pool.connection_class is gone"


def test_the_parser_internals_the_reply_bound_rests_on_are_there() -> None:
    misfit = connection.parser_misfit()
    assert misfit is None, f"redis-py {redis_py.__version__} no longer fits the reply bound: {misfit}"
    assert connection.bounded_parser(1 << 20) is not None


@pytest.mark.integration
async def test_a_reply_past_the_bound_is_refused_and_the_connection_goes_on(redis_url: str) -> None:
    """The worker's connections refuse a reply larger than MAX_REPLY_BYTES before it is all in
    memory (a read of 20 entries of 25 MB took workers down); the next command is answered."""
    client = redis_client(redis_url, max_reply_bytes=1 << 20)
    try:
        await client.set("bound:big", b"x" * (3 << 20))
        await client.set("bound:small", b"y")
        with pytest.raises(connection.ReplyTooLarge, match="more than 1048576 bytes"):
            await client.get("bound:big")
        assert await client.get("bound:small") == b"y"  # a fresh connection, nothing left over
        assert await client.strlen("bound:big") == 3 << 20
    finally:
        await client.delete("bound:big", "bound:small")
        await client.aclose()
