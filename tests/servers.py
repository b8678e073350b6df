"""Helpers for integration tests: find server binaries, skip (or, in CI, fail)
when they are missing, and start throwaway servers on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import bench.cluster
import bench.redis_process
from bench.cluster import SlotMap as SlotMap
from bench.cluster import key_slot as key_slot
from bench.redis_process import MissingServer, TlsFiles, find_binary
from bench.redis_process import acl_setuser_args as acl_setuser_args
from bench.redis_process import apply_acl as apply_acl
from bench.redis_process import free_port as free_port

REQUIRE = os.environ.get("STATPAIR_REQUIRE_SERVERS", "").strip().lower() in {"1", "true", "yes"}


def _missing(message: str) -> None:
    """Skip the test, or fail it when STATPAIR_REQUIRE_SERVERS=1."""
    if REQUIRE:
        pytest.fail(message + " and STATPAIR_REQUIRE_SERVERS=1 forbids skipping")
    pytest.skip(message)


@contextlib.contextmanager
def skip_when_missing() -> Iterator[None]:
    """A server binary (or TLS support) the launcher in bench/ did not find: skip (or fail)."""
    try:
        yield
    except MissingServer as exc:
        _missing(f"{exc} (needed by this integration test)")


def need_binary(name: str, *extra_dirs: str) -> str:
    """Path of ``name``; skip with a reason, or fail when STATPAIR_REQUIRE_SERVERS=1."""
    with skip_when_missing():
        return find_binary(name, *extra_dirs)
    raise AssertionError("unreachable: skip_when_missing skips or fails")


def start_redis(
    datadir: Path, appendonly: bool = False, port: int | None = None, password: str | None = None
):
    """A RedisExecutor (pytest-redis) on a free loopback port, started."""
    from pytest_redis.executor import RedisExecutor

    datadir.mkdir(parents=True, exist_ok=True)
    executor = RedisExecutor(
        executable=need_binary("redis-server"),
        databases=4,
        redis_timeout=0,  # the server's idle-client timeout: off, as in production
        loglevel="warning",
        host="127.0.0.1",
        port=port or free_port(),
        startup_timeout=30,
        appendonly="yes" if appendonly else "no",
        datadir=datadir,
        password=password,
    )
    executor.start()
    return executor


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll a synchronous predicate with a deadline (no sleep as synchronisation)."""

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Postgres:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port.

    initdb refuses to run as root, so as root the cluster is owned by the
    ``postgres`` system user and the commands run through ``runuser``.
    """

    def __init__(self) -> None:
        import tempfile

        initdb = need_binary("initdb", "/usr/lib/postgresql/*/bin")
        self.pg_ctl = str(Path(initdb).resolve().parent / "pg_ctl")
        # Its own folder directly under the temp dir, so the postgres user can reach it.
        self.base = base = Path(tempfile.mkdtemp(prefix="statpair-pg-"))
        self.data = base / "data"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                pytest.fail("running as root needs runuser to start PostgreSQL as 'postgres'")
            self.prefix = [runuser, "-u", "postgres", "--"]
            shutil.chown(base, "postgres", "postgres")
        subprocess.run(
            [
                *self.prefix,
                initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *self.prefix,
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(base / "postgres.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
        )

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(self.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.dsn(name)

    def stop(self) -> None:

        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.base, ignore_errors=True)


class MlflowServer:
    """A real ``mlflow server`` process (--serve-artifacts) on a free loopback port."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path, port: int | None = None) -> None:
        import sys

        mlflow = Path(sys.executable).parent / "mlflow"
        if not mlflow.exists():
            if REQUIRE:
                pytest.fail("the mlflow extra is not installed and STATPAIR_REQUIRE_SERVERS=1")
            pytest.skip("mlflow is not installed (pip install 'statpair[mlflow]')")
        self.port = port or free_port()  # a port given: a restart where the last one ran
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                backend_uri,
                "--serve-artifacts",
                "--artifacts-destination",
                str(artifacts),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(self.healthy, timeout=180, what=f"mlflow server on {self.url} (log: {log})")
        except BaseException:
            self.stop()
            raise

    def healthy(self) -> bool:
        import urllib.request

        if self.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """End the server and every process it started (uvicorn, mlflow 3.18's job runner and
        its huey consumers: its own process group), even when the server itself has exited."""
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
            _wait_group_gone(self.proc.pid, timeout=30)
        except (subprocess.TimeoutExpired, TimeoutError):  # a process that ignores SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the server and its workers: a crash, not a shutdown."""
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Until no live process of group ``pgid`` is left (zombies aside), or TimeoutError."""
    import psutil

    def gone() -> bool:
        for proc in psutil.process_iter(["status"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    return False
            except (ProcessLookupError, psutil.Error):
                continue
        return True

    wait_until(gone, timeout=timeout, what=f"process group {pgid} to end")


@contextlib.contextmanager
def postgres_database(prefix: str = "statpair"):
    """An empty database URI for MLflow (postgresql+psycopg2://): on STATPAIR_TEST_PG_DSN's
    server if set, else on a throwaway cluster; dropped (or the cluster removed) after."""
    import uuid

    pytest.importorskip("psycopg2")
    dsn = os.environ.get("STATPAIR_TEST_PG_DSN", "").strip()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    if dsn:
        import psycopg2

        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            yield dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1) + f"/{name}"
        finally:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()
        return
    pg = Postgres()
    try:
        yield pg.create_database(name).replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        pg.stop()


class TcpProxy:
    """A loopback TCP port forwarding to ``target_port`` while open; closed, it refuses
    connections (and drops those it carried), as a server that went down does. With
    ``delay_s``, each piece of the server's answers is held that long, for the first
    ``slow_for_s`` seconds after ``open`` (default: always): a slow server, or one slow to
    start answering."""

    def __init__(
        self, target_port: int, port: int | None = None, delay_s: float = 0.0, slow_for_s: float | None = None
    ) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.slow_for_s = slow_for_s
        self._slow_until = float("inf")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        if self.slow_for_s is not None:
            self._slow_until = time.monotonic() + self.slow_for_s
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b, delay in ((client, upstream, 0.0), (upstream, client, self.delay_s)):
                threading.Thread(target=self._pump, args=(a, b, delay), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delay_s: float) -> None:
        try:
            while data := src.recv(65536):
                if delay_s and time.monotonic() < self._slow_until:
                    time.sleep(delay_s)  # the slowness being simulated, not a synchronisation
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class BlackHole:
    """A loopback port that accepts TCP connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)  # the kernel completes handshakes; nothing ever reads
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


# --- Redis processes for issue 16: TLS, ACL and Redis Cluster -------------------------
# The launcher lives in bench/ (the benchmarks start clusters too); here a missing
# redis-server, redis-cli or TLS support skips the test (or fails it in CI).


class RedisProcess(bench.redis_process.RedisProcess):
    __doc__ = bench.redis_process.RedisProcess.__doc__

    def __init__(self, folder: Path, args: Sequence[str] = (), **kwargs: Any) -> None:
        with skip_when_missing():
            super().__init__(folder, args, **kwargs)


class LocalRedisCluster(bench.cluster.LocalRedisCluster):
    __doc__ = bench.cluster.LocalRedisCluster.__doc__

    def __init__(self, folder: Path, primaries: int = 3, replicas: int = 0, **kwargs: Any) -> None:
        with skip_when_missing():
            super().__init__(folder, primaries, replicas, **kwargs)


def make_tls_files(folder: Path) -> TlsFiles:
    """Write a throwaway CA and a 127.0.0.1 server certificate made with ``trustme``."""
    try:
        import trustme
    except ImportError:
        _missing("trustme is not installed (pip install trustme; needed for the TLS tests)")
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server-key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    cert.private_key_pem.write_to_path(str(files.key))
    # The chain (leaf first) so that a client trusting only the CA can verify it.
    files.cert.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return files


def start_tls_redis(folder: Path, tls: TlsFiles | None = None) -> RedisProcess:
    """A TLS-only redis-server (``--port 0 --tls-port P``) with a throwaway CA.

    The client needs ``server.url`` (``rediss://127.0.0.1:P``) and
    ``ssl_ca_certs=str(server.tls.ca)``.
    """
    return RedisProcess(folder, tls=tls or make_tls_files(folder / "tls"))


def write_acl_file(path: Path, rules: Sequence[str]) -> Path:
    """An ACL file with one ``user name rule …`` line per rule."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"user {' '.join(acl_setuser_args(rule))}\n" for rule in rules))
    return path


def start_acl_redis(
    folder: Path, rules: Sequence[str], admin_password: str | None = None, tls: TlsFiles | None = None
) -> RedisProcess:
    """A redis-server loading an ACL file made of ``rules``.

    With ``admin_password`` the default user keeps every right behind that
    password (this helper uses it); otherwise it stays ``nopass`` unless ``rules``
    name ``default`` themselves (then pass its password here).
    """
    users = list(rules)
    if admin_password is not None and not any(acl_setuser_args(r)[0] == "default" for r in users):
        users.insert(0, f"default on >{admin_password} ~* &* +@all")
    aclfile = write_acl_file(folder / "users.acl", users)
    return RedisProcess(folder, ["--aclfile", str(aclfile)], tls=tls, password=admin_password)
