"""A Redis for the demo and the benchmarks when ``REDIS_URL`` is unset: a real
``redis-server`` on a free loopback port if the binary exists, else
fakeredis's TCP server. Stopped (by the PID we started) on exit."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisTarget:
    url: str
    kind: str  # "external", "redis-server" or "fakeredis"
    pid: int | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ping(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Redis answered at {url} within {timeout:.0f} s")
            time.sleep(0.05)
    finally:
        client.close()


@contextlib.contextmanager
def redis_for(url: str | None, allow_fake: bool = True) -> Iterator[RedisTarget]:
    """Yield a Redis to use: ``url`` if given, else one started here and stopped on exit."""
    if url:
        yield RedisTarget(url, "external")
        return
    port = _free_port()
    binary = shutil.which("redis-server")
    if binary:
        with tempfile.TemporaryDirectory(prefix="statpair-redis-") as folder:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    folder,
                    "--loglevel",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            )
            target = RedisTarget(f"redis://127.0.0.1:{port}/0", "redis-server", proc.pid)
            try:
                _wait_ping(target.url, 30, proc)
                yield target
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        return
    if not allow_fake:
        raise RuntimeError("REDIS_URL is unset and redis-server is not installed")
    try:
        from fakeredis import TcpFakeServer
    except ImportError as exc:
        raise RuntimeError(
            "REDIS_URL is unset, redis-server is not installed, and fakeredis "
            "is missing (pip install fakeredis)"
        ) from exc
    server = TcpFakeServer(("127.0.0.1", port))
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    target = RedisTarget(f"redis://127.0.0.1:{port}/0", "fakeredis")
    try:
        _wait_ping(target.url, 10)
        yield target
    finally:
        server.shutdown()
        server.server_close()
