"""Helpers for integration tests: find server binaries, skip (or, in CI, fail)
when they are missing, and start throwaway servers on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

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
    import time

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
        import subprocess
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
        import subprocess

        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.base, ignore_errors=True)


class MlflowServer:
    """A real ``mlflow server`` process (--serve-artifacts) on a free loopback port."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path) -> None:
        import subprocess
        import sys

        mlflow = Path(sys.executable).parent / "mlflow"
        if not mlflow.exists():
            if REQUIRE:
                pytest.fail("the mlflow extra is not installed and STATPAIR_REQUIRE_SERVERS=1")
            pytest.skip("mlflow is not installed (pip install 'statpair[mlflow]')")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
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
        """End the server and the workers it started (its own process group)."""
        import signal
        import subprocess

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        self._log.close()


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
# Each server is a plain `redis-server` child in its own folder on loopback ports,
# ended by its own PID; every wait polls a condition against a deadline.


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def client_kwargs(self) -> dict[str, Any]:
        """What a redis-py client needs besides the ``rediss://`` URL."""
        return {"ssl_ca_certs": str(self.ca)}


def make_tls_files(folder: Path) -> TlsFiles:
    """Write a throwaway CA and a 127.0.0.1 server certificate made with ``trustme``."""
    try:
        import trustme
    except ImportError:
        message = "trustme is not installed (pip install trustme; needed for the TLS tests)"
        if REQUIRE:
            pytest.fail(message + " and STATPAIR_REQUIRE_SERVERS=1 forbids skipping")
        pytest.skip(message)
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server-key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    cert.private_key_pem.write_to_path(str(files.key))
    # The chain (leaf first) so that a client trusting only the CA can verify it.
    files.cert.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return files


def _free_ports(count: int, taken: set[int]) -> list[int]:
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


def _command(client: redis.Redis, *args: str) -> Any:
    """A raw command on a synchronous client (redis-py leaves execute_command untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


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
        self.binary = need_binary("redis-server")
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
            ports = _free_ports(2 if cluster else 1, taken)
            self.port = ports[0]
            self.bus_port = ports[1] if cluster else None
            self.proc = self._spawn(list(args))
            self.pid = self.proc.pid
            try:
                wait_until(self._ready, startup_timeout, f"redis-server on port {self.port}", 0.02)
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
                message = "this redis-server was built without TLS support"
                if REQUIRE:
                    pytest.fail(message + " and STATPAIR_REQUIRE_SERVERS=1 forbids skipping")
                pytest.skip(message)
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


def start_tls_redis(folder: Path, tls: TlsFiles | None = None) -> RedisProcess:
    """A TLS-only redis-server (``--port 0 --tls-port P``) with a throwaway CA.

    The client needs ``server.url`` (``rediss://127.0.0.1:P``) and
    ``ssl_ca_certs=str(server.tls.ca)``.
    """
    return RedisProcess(folder, tls=tls or make_tls_files(folder / "tls"))


def acl_setuser_args(rule: str) -> list[str]:
    """``"name on >pw ~k* +get"`` → ``["name", "on", ">pw", "~k*", "+get"]`` (whitespace-split)."""
    parts = rule.split()
    if not parts:
        raise ValueError("an ACL rule needs at least a user name")
    return parts


def apply_acl(client: redis.Redis, rules: Sequence[str]) -> None:
    """``ACL SETUSER`` each rule (``"name rule rule …"``; no spaces inside a rule) on one server."""
    for rule in rules:
        _command(client, "ACL", "SETUSER", *acl_setuser_args(rule))


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


SlotMap = tuple[tuple[int, int, int], ...]  # (first slot, last slot, primary's port), sorted


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (CRC16 of its hash tag, as the server computes it)."""
    from redis.crc import key_slot as _key_slot

    return int(_key_slot(key.encode() if isinstance(key, str) else key))


def _parse_cluster_nodes(text: str) -> list[dict[str, Any]]:
    """CLUSTER NODES lines → dicts: id, port, flags, primary (id or None), slots [(a, b)]."""
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        address, flags = fields[1], set(fields[2].split(","))
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported: not owned yet
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            {
                "id": fields[0],
                "port": int(address.split("@")[0].rsplit(":", 1)[1]),
                "flags": flags,
                "primary": None if fields[3] == "-" else fields[3],
                "connected": fields[7] == "connected",
                "slots": slots,
            }
        )
    return nodes


class LocalRedisCluster:
    """A Redis Cluster of ``primaries`` × (1 + ``replicas``) loopback redis-servers.

    Formed with ``redis-cli --cluster create``; ready when every live node reports
    ``cluster_state:ok`` with all 16384 slots served, every node sees the same
    slot owners, and every replica's link to its primary is up. ``node_timeout_ms``
    is short so that a killed primary is replaced within a few seconds; replicas
    may always fail over (validity factor 0), since tests kill primaries on purpose.
    """

    def __init__(
        self,
        folder: Path,
        primaries: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 1000,
        tls: TlsFiles | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        started = time.monotonic()
        self.folder = folder
        self.tls = tls
        self.nodes: list[RedisProcess] = []
        self.last_failover_s: float | None = None
        self._taken: set[int] = set()
        args = [
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-allow-replica-migration",
            "no",
            # Redis 7 waits 5 s before a diskless full sync to batch replicas: not here.
            "--repl-diskless-sync-delay",
            "0",
            *extra_args,
        ]
        try:
            for index in range(primaries * (1 + replicas)):
                self.nodes.append(
                    RedisProcess(
                        folder / f"node{index}", args, tls=tls, cluster=True, taken_ports=self._taken
                    )
                )
            self._create(replicas, timeout)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started

    def _create(self, replicas: int, timeout: float) -> None:
        command = [need_binary("redis-cli")]
        if self.tls is not None:
            command += ["--tls", "--cacert", str(self.tls.ca)]
        command += ["--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes)]
        command += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
            )

    # -- looking at it -------------------------------------------------------------------

    @property
    def live_nodes(self) -> list[RedisProcess]:
        return [node for node in self.nodes if node.alive()]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.live_nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.live_nodes]

    @property
    def url(self) -> str:
        """One live node's URL (a cluster client discovers the rest from it)."""
        return self.live_nodes[0].url

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.cluster.RedisCluster`` (any live node; TLS CA if any)."""
        return self.live_nodes[0].client_kwargs()

    def slot_map(self, via: RedisProcess | None = None) -> SlotMap:
        """Slot ranges and their primary's port, as one node (default: the first live one) sees them."""
        node = via or self.live_nodes[0]
        table = _parse_cluster_nodes(_command(node.admin(), "CLUSTER", "NODES"))
        return tuple(
            sorted(
                (first, last, entry["port"])
                for entry in table
                if "master" in entry["flags"] and "fail" not in entry["flags"]
                for first, last in entry["slots"]
            )
        )

    def primary_for(self, key_or_slot: str | bytes | int) -> RedisProcess:
        """The node that serves ``key_or_slot`` now."""
        slot = key_or_slot if isinstance(key_or_slot, int) else key_slot(key_or_slot)
        for first, last, port in self.slot_map():
            if first <= slot <= last:
                return self.node(port)
        raise LookupError(f"slot {slot} is not served by any primary")

    def primaries(self) -> list[RedisProcess]:
        return [self.node(port) for port in sorted({port for _, _, port in self.slot_map()})]

    def replicas_of(self, primary: RedisProcess) -> list[RedisProcess]:
        table = _parse_cluster_nodes(_command(self.live_nodes[0].admin(), "CLUSTER", "NODES"))
        ids = {entry["port"]: entry["id"] for entry in table}
        return [
            self.node(entry["port"])
            for entry in table
            if entry["primary"] == ids[primary.port] and self.node(entry["port"]).alive()
        ]

    def apply_acl(self, rules: Sequence[str]) -> None:
        """``ACL SETUSER`` on every live node: ACLs are per node, never spread by the cluster bus."""
        for node in self.live_nodes:
            apply_acl(node.admin(), rules)

    # -- waiting ---------------------------------------------------------------------------

    def _roles(self, via: RedisProcess) -> tuple[tuple[int, int], ...]:
        """(port, its primary's port or 0) of every node not marked failed, as ``via`` sees them."""
        table = _parse_cluster_nodes(_command(via.admin(), "CLUSTER", "NODES"))
        ports = {entry["id"]: entry["port"] for entry in table}
        return tuple(
            sorted(
                (entry["port"], ports.get(entry["primary"], -1) if entry["primary"] else 0)
                for entry in table
                if "fail" not in entry["flags"]
            )
        )

    def _healthy(self) -> bool:
        """Every live node: state ok, all slots ok, same live slot owners; the others replicas, link up."""
        try:
            views = set()
            for node in self.live_nodes:
                info = _command(node.admin(), "CLUSTER", "INFO")
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return False
                # Gossip spreads a replica's new role late: all views must agree on it too.
                views.add((self.slot_map(node), self._roles(node)))
            if len(views) != 1:
                return False
            owners = {port for _, _, port in views.pop()[0]}
            if not all(self.node(port).alive() for port in owners):
                return False
            for node in self.live_nodes:
                if node.port in owners:
                    continue
                replication = node.admin().info("replication")
                if replication.get("role") != "slave" or replication.get("master_link_status") != "up":
                    return False
            return True
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, StopIteration):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until the cluster is healthy (see the class docstring)."""
        try:
            wait_until(self._healthy, timeout, "the cluster to be ready", 0.05)
        except TimeoutError as exc:
            tails = "\n".join(f"--- node {n.port}:\n{n.log_tail(800)}" for n in self.nodes)
            raise TimeoutError(f"{exc}\n{tails}") from None

    def kill_primary(self, key_or_slot: str | bytes | int, timeout: float = 30.0) -> RedisProcess:
        """SIGKILL the primary serving ``key_or_slot`` by PID; wait for its replica to take over.

        Returns the new primary; ``last_failover_s`` holds the seconds from the kill
        to a healthy cluster with the slot served by another node.
        """
        old = self.primary_for(key_or_slot)
        if not self.replicas_of(old):
            raise RuntimeError(f"primary on port {old.port} has no live replica to promote")
        killed = time.monotonic()
        old.kill()

        def moved() -> bool:
            try:
                return self.primary_for(key_or_slot) is not old and self._healthy()
            except (LookupError, redis.ConnectionError, redis.TimeoutError, StopIteration):
                return False

        wait_until(moved, timeout, f"a replica to replace the primary on port {old.port}", 0.05)
        self.last_failover_s = time.monotonic() - killed
        return self.primary_for(key_or_slot)

    def __enter__(self) -> LocalRedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End every server this cluster started, by PID (SIGTERM all, then reap)."""
        for node in self.nodes:
            if node.alive():
                os.kill(node.pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()
