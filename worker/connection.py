"""The Redis client the worker uses: redis-py's asyncio client (a cluster client
with REDIS_CLUSTER), packing commands with hiredis in C as redis-py's synchronous
client already does, and the reads that must go straight to a key's node.

redis-py's asyncio ``Connection.pack_command`` is pure Python; with the ~130
commands of one published batch it was two thirds of the worker's CPU time
(profiled with cProfile on a drain of 50 000 states). The synchronous client
uses ``hiredis.pack_command`` (redis/connection.py ``HiredisRespSerializer``);
this mixin gives the asyncio connections the same packer.

Both mixins rest on redis-py internals (``AbstractConnection.send_packed_command``,
``pack_command``/``pack_commands``, a pool's ``connection_class``, a cluster's
``connection_kwargs``). ``upstream_misfit`` checks them; where an upstream release no
longer fits, the worker says so once and uses redis-py's own classes: slower, never
broken. tests/test_connection.py names the redis-py version that stopped fitting.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, cast

import redis as redis_py
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

_hiredis_pack: Callable[..., bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # hiredis missing: keep redis-py's Python packer
    _hiredis_pack = None
_HiredisParser: type | None
try:
    from redis._parsers import _AsyncHiredisParser as _HiredisParser
except ImportError:  # an upstream that moved it: replies are not bounded (the worker says so)
    _HiredisParser = None

Client = Redis | RedisCluster

logger = logging.getLogger(__name__)


_WRITER_CALLS = ("writelines", "write", "drain")  # what redis-py calls on a connection's writer


class ClosedTransportMixin:
    """A send on a connection whose transport has closed under it fails as a
    ``ConnectionError``, which the worker's and the client's retries handle.

    Under uvloop (the worker's event loop) that send raises ``RuntimeError: unable to
    perform operation on <TCPTransport closed=True …>; the handler is closed`` where
    asyncio's own loop raises an ``OSError`` or nothing (MagicStack/uvloop#506). It
    happened in a Redis Cluster failover: a primary's connection closed while the
    worker reclaimed entries, and the RuntimeError ended the worker. redis-py has
    already dropped the connection when it re-raises, so a retry reconnects. Likewise
    the AttributeError of a send on a connection another task has just torn down."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except RuntimeError as exc:
            if "handler is closed" not in str(exc):
                raise
            raise RedisConnectionError(f"the connection closed while sending ({exc})") from exc
        except AttributeError as exc:
            # Another task tore the connection down while this one was connecting on it (a
            # cluster failover, during a reclaim): redis-py then writes to a writer that is
            # now None, and the AttributeError ended the worker (seen in a failover test).
            if not any(f"'NoneType' object has no attribute '{a}'" in str(exc) for a in _WRITER_CALLS):
                raise
            raise RedisConnectionError(f"the connection closed while sending ({exc})") from exc


class HiredisPackMixin:
    """Pack commands with hiredis (same bytes on the wire, packed in C)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        assert _hiredis_pack is not None  # the mixin is only installed with hiredis
        return [_hiredis_pack(args)]

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join([self.pack_command(*cmd)[0] for cmd in commands])]


_classes: dict[type, type] = {}


class ReplyTooLarge(RedisError):
    """A reply larger than its connection's bound: redis-py drops the connection before the
    rest is read (and, not a ConnectionError, does not send the command again); what the
    command did on the server stands, e.g. entries an XREADGROUP delivered stay pending,
    for a bounded read to take. The worker's retry loop takes it as a lost connection."""


_bounded: dict[int, type] = {}


def bounded_parser(limit: int) -> type | None:
    """redis-py's hiredis parser refusing, with ``ReplyTooLarge``, any reply past ``limit``
    bytes before it is all in memory; None when hiredis or the parser is not there (then
    nothing bounds a reply: the worker reads states through its bounded script instead)."""
    if _HiredisParser is None or _hiredis_pack is None or parser_misfit() is not None:
        return None
    if limit not in _bounded:
        base: Any = _HiredisParser

        class BoundedHiredisParser(base):  # type: ignore[misc]
            max_reply_bytes = limit
            _fed = 0

            async def read_response(self, disable_decoding: bool = False, push_request: bool = False) -> Any:
                self._fed = 0
                return await super().read_response(disable_decoding, push_request)

            async def read_from_socket(self) -> bool:
                # redis-py's own, with the count: read a chunk, feed the hiredis reader.
                buffer = await self._stream.read(self._read_size)
                if not buffer or not isinstance(buffer, bytes):
                    raise RedisConnectionError("Connection closed by server.")
                self._fed += len(buffer)
                if self._fed > self.max_reply_bytes:
                    raise ReplyTooLarge(
                        f"a reply of more than {self.max_reply_bytes} bytes was refused (the connection "
                        "is dropped, the rest of it not read)"
                    )
                self._reader.feed(buffer)
                return True

        _bounded[limit] = BoundedHiredisParser
    return _bounded[limit]


def parser_misfit() -> str | None:
    """What of redis-py's hiredis parser the bound relies on is gone (None: it fits)."""
    if _HiredisParser is None:
        return "redis._parsers._AsyncHiredisParser is gone"
    for name, params in (
        ("read_from_socket", ("self",)),
        ("read_response", ("self", "disable_decoding", "push_request")),
        ("on_connect", ("self", "connection")),
    ):
        fn = getattr(_HiredisParser, name, None)
        if not callable(fn):
            return f"_AsyncHiredisParser.{name} is gone"
        found = tuple(inspect.signature(fn).parameters)
        if found != params:
            return f"_AsyncHiredisParser.{name} takes ({', '.join(found)}), not ({', '.join(params)})"
    if "_read_size" not in getattr(_HiredisParser, "__slots__", ()) and not any(
        "_read_size" in getattr(k, "__slots__", ()) for k in _HiredisParser.__mro__
    ):
        return "_AsyncHiredisParser has no _read_size"
    return None


# What the mixins override or call, with the parameters they pass (redis-py 5.0 … 8.2).
_RELIED_ON: dict[str, tuple[str, ...]] = {
    "send_packed_command": ("self", "command", "check_health"),
    "pack_command": ("self", "args"),
    "pack_commands": ("self", "commands"),
}


@cache
def upstream_misfit() -> str | None:
    """What of redis-py's asyncio connection methods no longer looks as the mixins
    expect (one sentence), or None when everything fits."""
    for name, params in _RELIED_ON.items():
        fn = getattr(AbstractConnection, name, None)
        if not callable(fn):
            return f"AbstractConnection.{name} is gone"
        if inspect.iscoroutinefunction(fn) != (name == "send_packed_command"):
            return f"AbstractConnection.{name} changed between a plain and an async method"
        found = tuple(inspect.signature(fn).parameters)
        if found != params:
            return f"AbstractConnection.{name} takes ({', '.join(found)}), not ({', '.join(params)})"
    return None


def cluster_misfit(rc: Any) -> str | None:
    """What of a cluster client's attributes (set in its __init__) ``redis_client`` cannot
    give its connection class to, or None."""
    for owner, name in ((rc, "RedisCluster"), (getattr(rc, "nodes_manager", None), "NodesManager")):
        if not isinstance(getattr(owner, "connection_kwargs", None), dict):
            return f"{name}.connection_kwargs is gone"
    nodes = getattr(rc.nodes_manager, "startup_nodes", None)
    if not isinstance(nodes, dict) or not all(hasattr(n, "connection_class") for n in nodes.values()):
        return "NodesManager.startup_nodes no longer maps names to nodes with a connection_class"
    return None


def pool_misfit(client: Any) -> str | None:
    """Whether a client's pool still takes a ``connection_class`` (None: it does)."""
    if not isinstance(getattr(getattr(client, "connection_pool", None), "connection_class", None), type):
        return "a client's connection_pool.connection_class is gone"
    return None


_warned: list[str] = []


def fits(misfit: str | None) -> bool:
    """True when nothing misfits; else one warning per process (the first misfit found)."""
    if misfit is not None and not _warned:
        _warned.append(misfit)
        logger.warning(
            "redis-py %s: %s; the worker uses redis-py's own connection classes (commands packed "
            "in Python, a send on a closed transport not retried as a lost connection)",
            redis_py.__version__,
            misfit,
        )
    return misfit is None


def _fast(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` with a closed transport's send failing as a ConnectionError, packing with
    hiredis when it is installed."""
    if cls not in _classes:
        mixins: tuple[type, ...] = (ClosedTransportMixin,)
        if _hiredis_pack is not None:
            mixins += (HiredisPackMixin,)
        _classes[cls] = type(f"Statpair{cls.__name__}", (*mixins, cls), {})
    return _classes[cls]


def redis_client(
    url: str,
    *,
    cluster: bool = False,
    ca_file: Path | None = None,
    max_reply_bytes: int | None = None,
    **kwargs: Any,
) -> Client:
    """``Redis.from_url`` (or ``RedisCluster.from_url``) with hiredis command packing
    when hiredis is installed, ``ca_file`` to verify a rediss:// server, and, with
    ``max_reply_bytes``, every reply bounded (``ReplyTooLarge``) when the parser allows."""
    if ca_file is not None:
        kwargs["ssl_ca_certs"] = str(ca_file)
    parser = bounded_parser(max_reply_bytes) if max_reply_bytes is not None else None
    if cluster:
        rc = RedisCluster.from_url(url, **kwargs)
        if not fits(upstream_misfit() or cluster_misfit(rc)):
            return rc
        if parser is not None:  # RedisCluster takes no parser_class: every node's connections do
            rc.connection_kwargs["parser_class"] = parser
            rc.nodes_manager.connection_kwargs["parser_class"] = parser
            for node in rc.nodes_manager.startup_nodes.values():
                node.connection_kwargs["parser_class"] = parser
        fast = cast(
            type[Connection], _fast(SSLConnection if url.lower().startswith("rediss://") else Connection)
        )
        # from_url drops a connection_class (redis-py 8.1): give it to the nodes known now
        # and to the kwargs every node discovered later is built from. Pure-Python packing
        # cost the worker 14.6 µs a state on a cluster against 8.8 with hiredis.
        rc.connection_kwargs["connection_class"] = fast
        rc.nodes_manager.connection_kwargs["connection_class"] = fast
        for node in rc.nodes_manager.startup_nodes.values():
            node.connection_class = fast
        return rc
    if parser is not None:
        kwargs["parser_class"] = parser
    client = Redis.from_url(url, **kwargs)
    if fits(upstream_misfit() or pool_misfit(client)):
        pool = client.connection_pool
        pool.connection_class = _fast(pool.connection_class)
    return client


async def xreadgroup(
    redis: Client, group: str, consumer: str, stream: str, start: str | bytes, count: int, block: int | None
) -> Any:
    """XREADGROUP of one stream. Through a cluster client it goes straight to the
    stream's node: redis-py's ``xreadgroup`` asks a node for the keys of every
    XREADGROUP (a movable-keys command) with two COMMAND GETKEYS round trips
    (measured: 236-330 µs a call against 86-111 µs direct)."""
    if isinstance(redis, RedisCluster):
        args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        return await redis.execute_command(
            *args, "STREAMS", stream, start, target_nodes=redis.get_node_from_key(stream)
        )
    return await redis.xreadgroup(group, consumer, {stream: start}, count=count, block=block)


async def xread(redis: Client, stream: str, start: str | bytes, count: int, block: int | None) -> Any:
    """XREAD of one stream, straight to its node through a cluster client (as ``xreadgroup``)."""
    if isinstance(redis, RedisCluster):
        args: list[Any] = ["XREAD", "COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        return await redis.execute_command(
            *args, "STREAMS", stream, start, target_nodes=redis.get_node_from_key(stream)
        )
    return await redis.xread({stream: start}, count=count, block=block)
