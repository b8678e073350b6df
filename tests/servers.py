"""Helpers for integration tests: find server binaries, skip (or, in CI, fail)
when they are missing, and start throwaway servers on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

REQUIRE = os.environ.get("STATPAIR_REQUIRE_SERVERS", "").strip().lower() in {"1", "true", "yes"}


def need_binary(name: str, *extra_dirs: str) -> str:
    """Path of ``name``; skip with a reason, or fail when STATPAIR_REQUIRE_SERVERS=1."""
    path = shutil.which(name)
    if path is None:
        for folder in extra_dirs:
            for candidate in sorted(Path("/").glob(folder.lstrip("/") + "/" + name)):
                path = str(candidate)
    if path is None:
        message = f"{name} is not installed (needed by this integration test)"
        if REQUIRE:
            pytest.fail(message + " and STATPAIR_REQUIRE_SERVERS=1 forbids skipping")
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(datadir: Path, appendonly: bool = False, port: int | None = None):
    """A RedisExecutor (pytest-redis) on a free loopback port, started."""
    from pytest_redis.executor import RedisExecutor

    executor = RedisExecutor(
        executable=need_binary("redis-server"),
        databases=4,
        redis_timeout=30,
        loglevel="warning",
        host="127.0.0.1",
        port=port or free_port(),
        startup_timeout=30,
        appendonly="yes" if appendonly else "no",
        datadir=datadir,
    )
    executor.start()
    return executor
