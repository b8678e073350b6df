"""The worker's Redis connections: a send on a transport that closed under it (uvloop's
RuntimeError, seen in a Redis Cluster failover) fails as a ConnectionError, which every
retry loop handles; any other RuntimeError is left alone."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.connection import ClosedTransportMixin, _fast, redis_client
from worker.retry import TRANSIENT, retrying

CLOSED = (
    "unable to perform operation on <TCPTransport closed=True reading=False 0x55e>; the handler is closed"
)


class Writer:
    """A stream writer whose transport is gone, as uvloop reports it."""

    def __init__(self, message: str) -> None:
        self.message, self.closed = message, False

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
