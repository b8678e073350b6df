"""One throwaway ``redis-server`` child on free loopback ports, ended by its PID
(optionally TLS-only, or a cluster node with its bus on a second port), and the
ACL helpers. The benchmarks start Redis with it; the tests wrap it so that a
missing binary skips (see tests/servers.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis


class MissingServer(RuntimeError):
    """A server binary (or a feature of it, such as TLS) this run needs is not installed."""


def find_binary(name: str, *extra_dirs: str) -> str:
    """Path of ``name`` on PATH or in ``extra_dirs`` (globs); ``MissingServer`` if absent."""
    path = shutil.which(name)
    if path is None:
        for folder in extra_dirs:
            for candidate in sorted(Path("/").glob(folder.lstrip("/") + "/" + name)):
                path = str(candidate)
    if path is None:
        raise MissingServer(f"{name} is not installed")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``predicate`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def client_kwargs(self) -> dict[str, Any]:
        """What a redis-py client needs besides the ``rediss://`` URL."""
        return {"ssl_ca_certs": str(self.ca)}


def free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct free loopback ports not in ``taken`` (which grows)."""
    ports: list[int] = []
    for _ in range(count * 50):
        if len(ports) == count:
            break
        port = free_port()
        if port not in taken:
            taken.add(port)
            ports.append(port)
    if len(ports) < count:
        raise RuntimeError(f"could not find {count} distinct free loopback ports")
    return ports


def command(client: redis.Redis, *args: str) -> Any:
    """A raw command on a synchronous client (redis-py leaves execute_command untyped)."""
    return client.execute_command(*args)


class RedisProcess:
    """One ``redis-server`` child in its own folder on a free loopback port, ended by PID.

    With ``tls`` the server listens only on a TLS port (``--port 0``). With
    ``cluster`` it runs in cluster mode, its bus on a second free port
    (``--cluster-port``, so port + 10000 need not be free or valid). ``username``
    and ``password`` are what this helper's own admin connection uses (e.g. when an
    ACL file gives the default user a password); they are never logged.
    """

    def __init__(
        self,
        folder: Path,
        args: Sequence[str] = (),
        *,
        tls: TlsFiles | None = None,
        cluster: bool = False,
        username: str | None = None,
        password: str | None = None,
        taken_ports: set[int] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.binary = find_binary("redis-server")
        self.folder = folder
        self.tls = tls
        self.username = username
        self.password = password
        self._admin: redis.Redis | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "redis.log"
        taken = taken_ports if taken_ports is not None else set()
        # A port found free may be taken before the server binds it: try fresh ports.
        for attempt in range(3):
            ports = free_ports(2 if cluster else 1, taken)
            self.port = ports[0]
            self.bus_port = ports[1] if cluster else None
            self.proc = self._spawn(list(args))
            self.pid = self.proc.pid
            try:
                poll_until(self._ready, startup_timeout, f"redis-server on port {self.port}", 0.02)
                return
            except _BindError:
                if attempt == 2:
                    raise RuntimeError(f"redis-server could not bind a port:\n{self.log_tail()}") from None
            except BaseException:  # a timeout, a skip: leave no server behind
                self.kill()
                raise

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        command = [self.binary, "--bind", "127.0.0.1", "--dir", str(self.folder), "--daemonize", "no"]
        command += ["--save", "", "--appendonly", "no", "--loglevel", "notice", "--logfile", ""]
        if self.tls is None:
            command += ["--port", str(self.port)]
        else:
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            command += ["--tls-ca-cert-file", str(self.tls.ca)]
        if self.bus_port is not None:
            command += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)]
            command += ["--cluster-config-file", str(self.folder / "nodes.conf")]
            if self.tls is not None:
                command += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        command += args
        self._admin = None
        with self.log_path.open("ab") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log_tail()
            if "Address already in use" in tail:
                raise _BindError(tail)
            if self.tls is not None and ("tls" in tail.lower()) and "Bad directive" in tail:
                raise MissingServer("this redis-server was built without TLS support")
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{tail}")
        try:
            return bool(self.admin().ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """``redis://`` or ``rediss://`` URL without credentials."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def url_for(self, username: str, password: str) -> str:
        """The URL with ``username:password@`` (for tests; never log it)."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a redis-py client to this server (TLS CA if any)."""
        kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if self.tls is not None:
            kwargs.update(ssl=True, **self.tls.client_kwargs())
        return kwargs

    def admin(self) -> redis.Redis:
        """A synchronous client (decoded responses) for set-up and inspection."""
        if self._admin is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._admin = redis.Redis(
                **self.client_kwargs(),
                username=self.username,
                password=self.password,
                decode_responses=True,
                socket_timeout=5,
                socket_connect_timeout=2,
                retry=Retry(NoBackoff(), 0),  # callers poll with a deadline; no hidden backoff
            )
        return self._admin

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL this server by its PID and reap it."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)
        self._close_admin()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID (no save configured, so it exits at once), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_admin()

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


class _BindError(Exception):
    """The port chosen was taken before redis-server could bind it."""


def acl_setuser_args(rule: str) -> list[str]:
    """``"name on >pw ~k* +get"`` → ``["name", "on", ">pw", "~k*", "+get"]`` (whitespace-split)."""
    parts = rule.split()
    if not parts:
        raise ValueError("an ACL rule needs at least a user name")
    return parts


def apply_acl(client: redis.Redis, rules: Sequence[str]) -> None:
    """``ACL SETUSER`` each rule (``"name rule rule …"``; no spaces inside a rule) on one server."""
    for rule in rules:
        command(client, "ACL", "SETUSER", *acl_setuser_args(rule))
