"""The Redis client the worker uses: redis-py's asyncio client, but packing
commands with hiredis in C as redis-py's synchronous client already does.

redis-py's asyncio ``Connection.pack_command`` is pure Python; with the ~130
commands of one published batch it was two thirds of the worker's CPU time
(profiled with cProfile on a drain of 50 000 states). The synchronous client
uses ``hiredis.pack_command`` (redis/connection.py ``HiredisRespSerializer``);
this mixin gives the asyncio connections the same packer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

_hiredis_pack: Callable[..., bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # hiredis missing: keep redis-py's Python packer
    _hiredis_pack = None


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


def _fast(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    if cls not in _classes:
        _classes[cls] = type(f"HiredisPack{cls.__name__}", (HiredisPackMixin, cls), {})
    return _classes[cls]


def redis_client(url: str, **kwargs: Any) -> Redis:
    """``Redis.from_url`` with hiredis command packing when hiredis is installed."""
    client = Redis.from_url(url, **kwargs)
    if _hiredis_pack is not None:
        pool = client.connection_pool
        pool.connection_class = _fast(pool.connection_class)
    return client
