"""The release flow against a real ``mlflow server`` (PostgreSQL, --serve-artifacts)
and a real Redis: train a tiny policy, register it, promote it, and watch two
workers with their own caches (two hosts) swap; a broken version, a rollback, the
registry killed while serving, cold starts with the registry down, and the
promotion guard. One mlflow server for the module (it takes seconds to start)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from redis.asyncio import Redis

from tests.conftest import make_settings, unique, wait_for
from tests.servers import MlflowServer, TcpProxy, free_port, need_binary, postgres_database, start_redis
from tracking.registry import Registry, install, parse_uri, register
from tracking.registry.__main__ import main as registry_cli
from worker.protocol import parse_result
from worker.server import Server

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("mlflow_settings_restored")]

ROOT = Path(__file__).resolve().parent.parent
STATE = [0.05 * i for i in range(28)]
POLL_S = 1.0
GOOD = {
    "test_sharpe": 1.2,
    "test_zscore_sharpe": 0.8,
    "val_sharpe": 1.0,
    "val_zscore_sharpe": 0.7,
    "verdict": "verdict: serve",
}


@dataclass
class Registry_:
    """The module's mlflow server, restartable on the same port."""

    backend: str
    base: Path
    server: MlflowServer

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self) -> None:
        self.server = MlflowServer(
            self.backend, self.base / "artifacts", self.base / "mlflow.log", port=self.server.port
        )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry_]:
    pytest.importorskip("mlflow")
    with postgres_database("statpair_registry") as backend:
        base = tmp_path_factory.mktemp("registry")
        holder = Registry_(backend, base, MlflowServer(backend, base / "artifacts", base / "mlflow.log"))
        try:
            yield holder
        finally:
            holder.server.stop()


@dataclass(frozen=True)
class Trained:
    run_id: str
    best: Path
    final: Path


def train_and_register(url: str, base: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``python -m agent.train --register NAME`` of a tiny policy, tracked at ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODEL_"))}
    env.update({"MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "registry-tests"})
    tiny = "--episodes 2 --episode-length 64 --learning-starts 32 --batch-size 16 --buffer-size 1000 "
    tiny += "--eval-every 1 --eval-episodes 2 --eval-length 64 --quiet"
    paths = ["--out", str(base / "policy.pt"), "--run-dir", str(base / "runs"), "--register", name]
    return subprocess.run(
        [sys.executable, "-m", "agent.train", *tiny.split(), *paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def trained(registry: Registry_, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tiny training run, tracked on the server and registered by --register: its best
    and final checkpoints (the tests register them again under names of their own)."""
    base = tmp_path_factory.mktemp("train")
    name = unique("trained")
    out = train_and_register(registry.url, base, name)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (base / "runs").iterdir()
    assert f"registered best.pt as version 1 of {name} (sha256 " in out.stdout, (
        out.stdout + out.stderr[-3000:]
    )
    (version,) = Registry(registry.url).versions(name)
    # The run's id, from the registry: the checkpoint has it only if the run started within
    # the tracker's 2 s wait, which a fresh server on a loaded machine can miss.
    run_id = version.run_id
    assert run_id is not None and version.aliases == ()
    assert f"run {run_id})" in out.stdout
    assert set(version.tags) >= {"sha256", "checkpoint", "contract_id", "val_sharpe", "val_zscore_sharpe"}
    assert {"test_sharpe", "test_zscore_sharpe"} <= set(version.tags)
    assert version.tags["test_data"] == "2 synthetic paths × 64 steps, seeds from 10000"
    assert version.sha256 == hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    return Trained(run_id, run / "best.pt", run / "final.pt")


def test_a_slow_server_still_gets_the_run_and_its_registration(registry: Registry_, tmp_path: Path) -> None:
    """A server slow to answer at first (a just-started mlflow 3.18.0 on a loaded host: each
    answer held 2 s for the first 12 s): the run starts only after the trainer's 2 s wait,
    and after this tiny run's training. The run is still finished and the version registered
    (it was lost: run_id was read before the run had started), and the command exits 0."""
    proxy = TcpProxy(registry.server.port, delay_s=2.0, slow_for_s=12.0)
    proxy.open()
    try:
        name = unique("slow")
        out = train_and_register(proxy.url, tmp_path, name)
    finally:
        proxy.close()
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert f"registered best.pt as version 1 of {name} (sha256 " in out.stdout, out.stderr[-3000:]
    (version,) = Registry(registry.url).versions(name)
    run = Registry(registry.url)._client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and "best_eval_sharpe" in run.data.metrics


def _settings(tmp_path: Path, redis_url: str, name: str, i: int, tracking_uri: str, **kw):
    return make_settings(
        tmp_path,
        redis_url=redis_url,
        consumer=f"w{i}",
        model_uri=f"models:/{name}@champion",
        mlflow_tracking_uri=tracking_uri,
        model_cache_dir=tmp_path / f"host{i}-cache",
        registry_poll_s=POLL_S,
        registry_timeout_s=2.0,
        **kw,
    )


class Swaps:
    """When each worker started serving which version (from its model manager's hook)."""

    def __init__(self, servers: list[Server]) -> None:
        self.log: list[list[tuple[float, str | None]]] = [[] for _ in servers]
        for i, srv in enumerate(servers):
            srv.state.models.on_change.append(lambda m, i=i: self._seen(i, m))

    def _seen(self, i: int, models) -> None:
        version = models.current.version if models.current else None
        if not self.log[i] or self.log[i][-1][1] != version:
            self.log[i].append((time.monotonic(), version))

    def rounded(self, t0: float, version: str) -> list[float]:
        """Seconds from ``t0`` until each worker served ``version``."""
        return [round(next(t for t, v in log if v == version and t >= t0) - t0, 2) for log in self.log]


@contextlib.asynccontextmanager
async def workers(settings: list) -> AsyncIterator[list[Server]]:
    stop = asyncio.Event()
    servers = [Server(s, stop=stop) for s in settings]
    tasks = [asyncio.create_task(srv.serve()) for srv in servers]
    try:
        yield servers
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)


def versions(servers: list[Server]) -> list[str | None]:
    return [s.state.models.current.version if s.state.models.current else None for s in servers]


async def serving(servers: list[Server], version: str, timeout: float = 4 * POLL_S + 30) -> None:
    await wait_for(lambda: versions(servers) == [version] * len(servers), timeout=timeout, what=f"v{version}")


async def ask(redis: Redis, n: int = 8) -> list:
    """n states through the group; their n results."""
    ids = [unique("r") for _ in range(n)]
    for cid in ids:
        await redis.xadd("statpair:states", {"state": json.dumps(STATE), "id": cid})
    found: dict[str, object] = {}

    async def answered() -> bool:
        for _, fields in await redis.xrevrange("statpair:actions", count=n + 100):
            r = parse_result(fields)
            if r.id in ids:
                found[r.id] = r
        return len(found) == n

    await wait_for(answered, timeout=30, what=f"{n} results")
    return [found[cid] for cid in ids]


async def cli(monkeypatch: pytest.MonkeyPatch, url: str, *args: str) -> int:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    return await asyncio.to_thread(registry_cli, list(args))


async def test_release_flow(
    registry: Registry_,
    trained: Trained,
    real_redis: Redis,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = unique("pol")
    v1 = register(name, trained.best, trained.run_id, GOOD, tracking_uri=registry.url).version
    v2 = register(name, trained.final, trained.run_id, GOOD, tracking_uri=registry.url).version
    assert (v1.version, v2.version) == (1, 2) and v1.run_id == trained.run_id
    assert await cli(monkeypatch, registry.url, "promote", name, "1", "--alias", "champion") == 0
    assert (
        f"{name}@champion: unset → version 1 (held-out Sharpe 1.20, z-score rule 0.80)"
        in capsys.readouterr().out
    )

    settings = [_settings(tmp_path, redis_url, name, i, registry.url) for i in (1, 2)]
    async with workers(settings) as servers:
        swaps = Swaps(servers)
        await serving(servers, "1")
        results = await ask(real_redis)
        assert {(r.status, r.model_version) for r in results} == {("ok", "1")}
        st = servers[0].state
        assert st.models.current.run_id == trained.run_id and st.models.current.provenance["name"] == name

        # promote: both hosts swap, each downloading into its own cache
        t0 = time.monotonic()
        assert await cli(monkeypatch, registry.url, "promote", name, "2") == 0
        assert f"{name}@champion: version 1 → version 2" in capsys.readouterr().out
        await serving(servers, "2")
        timings = [f"promote → v2: swapped after {swaps.rounded(t0, '2')} s (REGISTRY_POLL_S {POLL_S:g})"]
        assert {(r.status, r.model_version) for r in await ask(real_redis)} == {("ok", "2")}
        for i in (1, 2):
            assert sorted(p.name for p in (tmp_path / f"host{i}-cache" / name).iterdir()) == ["1", "2"]

        # rollback: back to the version before
        t0 = time.monotonic()
        assert await cli(monkeypatch, registry.url, "rollback", name) == 0
        assert f"{name}@champion: version 2 → version 1" in capsys.readouterr().out
        await serving(servers, "1")
        timings.append(f"rollback → v1: swapped after {swaps.rounded(t0, '1')} s")

        # a broken version: both keep v1, say so once, and do not retry it every poll
        garbage = tmp_path / "broken.pt"
        garbage.write_bytes(os.urandom(2048))
        v3 = register(name, garbage, trained.run_id, GOOD, tracking_uri=registry.url).version
        assert await cli(monkeypatch, registry.url, "promote", name, str(v3.version)) == 0
        sources = [s.state.models.source for s in servers]
        await wait_for(
            lambda: all(s.state.models.reload_failures == 1 for s in servers),
            timeout=30,
            what="both to fail v3",
        )
        polls = [s.polls for s in sources]
        await wait_for(
            lambda: all(s.polls >= p + 3 for s, p in zip(sources, polls, strict=True)),
            timeout=10 * POLL_S + 30,
            what="three more polls",
        )
        assert versions(servers) == ["1", "1"]
        assert [s.state.models.reload_failures for s in servers] == [1, 1]  # no retry at each poll
        for srv in servers:
            assert "not a readable checkpoint" in srv.state.models.last_error
            assert list(srv.state.models.source.status()["failed_versions"]) == ["3"]
        assert caplog.text.count("model load failed") == 2  # once per worker
        assert {(r.status, r.model_version) for r in await ask(real_redis)} == {("ok", "1")}

        # the registry killed while serving: serving goes on, at its usual latency
        registry.server.kill()
        await wait_for(
            lambda: all(s.status()["registry_up"] is False for s in sources),
            timeout=4 * POLL_S + 30,
            what="both workers to notice the outage",
        )
        latencies = []
        for _ in range(5):
            rs = await ask(real_redis, n=16)
            assert {(r.status, r.model_version) for r in rs} == {("ok", "1")}
            latencies += [r.latency_ms for r in rs]
        timings.append(f"registry down: batch latency {min(latencies):.3f}-{max(latencies):.3f} ms")
        assert caplog.text.count("does not answer") == 2  # once per worker
        assert "Retrying" not in caplog.text  # nor urllib3's line per retry
        registry.restart()
        await wait_for(
            lambda: all(s.status()["registry_up"] for s in sources), timeout=4 * POLL_S + 60, what="recovery"
        )
        t0 = time.monotonic()
        assert await cli(monkeypatch, registry.url, "promote", name, "2") == 0
        await serving(servers, "2")
        timings.append(f"registry back, promote → v2: swapped after {swaps.rounded(t0, '2')} s")
    with capsys.disabled():  # measured, not asserted: the machine is shared
        print("\n" + "\n".join(timings))


async def test_cold_start_with_the_registry_down(
    registry: Registry_,
    trained: Trained,
    real_redis: Redis,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = unique("pol")
    info = register(name, trained.best, trained.run_id, GOOD, tracking_uri=registry.url).version
    client = Registry(registry.url)
    client.promote(name, info.version, "champion")
    proxy = TcpProxy(registry.server.port)  # the registry as a host sees it; closed: down
    cache = tmp_path / "host1-cache"
    install(cache, client.resolve(parse_uri(f"models:/{name}@champion")), lambda d: client.download(info, d))
    try:
        async with workers([_settings(tmp_path, redis_url, name, 1, proxy.url)]) as servers:
            await serving(servers, "1")
            source = servers[0].state.models.source
            assert source.status()["serving_cached"] is True and source.status()["registry_up"] is False
            assert f"serving version 1 of {name}, the newest in the cache" in caplog.text
            assert {(r.status, r.model_version) for r in await ask(real_redis)} == {("ok", "1")}
            proxy.open()
            await wait_for(lambda: source.status()["registry_up"] is True, timeout=4 * POLL_S + 30, what="up")
            assert source.status()["serving_cached"] is False and servers[0].state.models.reloads == 1
    finally:
        proxy.close()


async def test_cold_start_without_a_cache_waits_for_the_registry(
    registry: Registry_, trained: Trained, real_redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    name = unique("pol")
    info = register(name, trained.best, trained.run_id, GOOD, tracking_uri=registry.url).version
    Registry(registry.url).promote(name, info.version, "champion")
    proxy = TcpProxy(registry.server.port)
    try:
        async with workers([_settings(tmp_path, redis_url, name, 1, proxy.url)]) as servers:
            assert {(r.status, r.error) for r in await ask(real_redis, n=3)} == {
                ("error", "model_unavailable")
            }
            proxy.open()
            await serving(servers, "1")
            assert {(r.status, r.model_version) for r in await ask(real_redis)} == {("ok", "1")}
    finally:
        proxy.close()


def test_promotion_guard(registry: Registry_, trained: Trained, tmp_path: Path) -> None:
    name = unique("pol")
    good = register(name, trained.best, trained.run_id, GOOD, tracking_uri=registry.url).version
    poor = {
        **GOOD,
        "test_sharpe": 0.3,
        "verdict": "verdict: do not serve — on test it loses after costs: Sharpe -0.30",
    }
    bad = register(name, trained.final, trained.run_id, poor, tracking_uri=registry.url).version
    unscored = register(name, trained.best, trained.run_id, {}, tracking_uri=registry.url).version
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": registry.url,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tracking.registry", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run("promote", name, str(good.version)).stdout.splitlines()[0] == "verdict: serve"
    refused = run("promote", name, str(bad.version))
    assert refused.returncode == 1
    assert refused.stdout.strip() == "verdict: do not serve — on test it loses after costs: Sharpe -0.30"
    assert refused.stderr.strip() == (
        f"error: version {bad.version} of {name}: verdict: do not serve — on test it loses after costs: "
        "Sharpe -0.30: refusing (--force promotes it anyway)"
    )
    assert "has no verdict recorded" in run("promote", name, str(unscored.version)).stderr
    client = Registry(registry.url)
    assert client.aliases(name) == {"champion": good.version}  # nothing moved
    forced = run("promote", name, str(bad.version), "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip().splitlines()[-1] == (
        f"{name}@champion: version {good.version} → version {bad.version} (held-out Sharpe 0.30, "
        "z-score rule 0.80) [--force: the promotion rule would refuse it]"
    )
    listed = run("list", name)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:6] == ["version", "aliases", "status", "held-out", "z-score", "val"]
    row = next(line.split() for line in lines[2:] if line.split()[0] == str(bad.version))
    assert row[1:5] == ["champion", "READY", "0.30", "0.80"] and trained.run_id in row
    assert lines[-1] == f"champion history: {good.version} → {bad.version}"


def test_rollback_follows_the_history_even_past_a_hand_move(registry: Registry_, trained: Trained) -> None:
    name = unique("pol")
    vs = [register(name, trained.best, trained.run_id, GOOD, tracking_uri=registry.url).version.version]
    vs += [register(name, trained.final, trained.run_id, GOOD, tracking_uri=registry.url).version.version]
    client = Registry(registry.url)
    client.promote(name, vs[0], "champion")
    client.promote(name, vs[1], "champion")
    # someone moves the alias in the MLflow UI: the next rollback still returns to where it was
    from mlflow import MlflowClient

    MlflowClient(registry.url).set_registered_model_alias(name, "champion", str(vs[0]))
    move = client.rollback(name, "champion")
    assert (move.before, move.after) == (vs[0], vs[1])
    assert client.rollback(name, "champion").after == vs[0]
    with pytest.raises(Exception, match="no earlier version"):
        client.rollback(name, "champion")


# -- the compose services' commands, minus Docker -------------------------------------------------


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        value = env.get(name, "")
        if op == ":-" and not value:
            return arg
        if op == ":?" and not value:
            raise AssertionError(f"compose needs {name}: {arg}")
        return value

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, text)


class Compose:
    """A compose service's command and environment as the container would get them,
    with the other services' host names pointed at loopback servers and each volume
    at a fresh folder, run from an unwritable working directory (as root: without
    capabilities, in a folder root does not own), the way the image runs: a non-root
    user in a root-owned /app."""

    def __init__(self, base: Path, hosts: dict[str, str]) -> None:
        self.doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
        self.env = dict(
            line.split("=", 1)
            for line in (ROOT / ".env.example").read_text().splitlines()
            if line and not line.startswith("#")
        )
        self.base, self.hosts = base, hosts
        self.cwd = base / "app"  # unwritable
        self.cwd.mkdir()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.cwd, "nobody")
            self.prefix = [need_binary("setpriv"), "--bounding-set=-all", "--"]
        self.cwd.chmod(0o555)
        self.volumes: dict[str, Path] = {}

    def _fix(self, text: str, mounts: dict[str, Path]) -> str:
        text = _interpolate(text, self.env)
        for host, loopback in self.hosts.items():
            text = text.replace(host, loopback)
        for target, folder in mounts.items():
            text = text.replace(target, str(folder))
        return text

    def command(
        self, service: str, *extra: str, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> list[str]:
        """The service's entrypoint and command plus ``extra``; ``args`` replace the
        command, as ``docker compose run SERVICE ARGS`` does."""
        svc = self.doc["services"][service]
        mounts = {}
        for volume in svc.get("volumes", []):
            name, target = volume.split(":")[:2]
            mounts[target] = self.volumes.setdefault(name, self.base / "volumes" / name)
            mounts[target].mkdir(parents=True, exist_ok=True)
        given = svc["command"] if args is None else args
        command = [self._fix(a, mounts) for a in svc.get("entrypoint", []) + given]
        self.run_env = {k: self._fix(str(v), mounts) for k, v in svc.get("environment", {}).items()}
        self.run_env.update(env or {})
        return [*command, *extra]

    def run(self, command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        assert command[0] == "python"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.cwd),  # unwritable too: nothing may rely on writing there
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": str(ROOT),  # the image installs the package; here it is the checkout
            **self.run_env,
        }
        return subprocess.run(
            [*self.prefix, sys.executable, *command[1:]],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


async def test_compose_commands_from_an_unwritable_directory(registry: Registry_) -> None:
    base = Path(tempfile.mkdtemp(prefix="statpair-compose-"))  # reachable without capabilities
    redis_server = None
    try:
        redis_password = "change-me-redis"  # .env.example's, which the command's URL carries
        redis_server = start_redis(base / "redis", password=redis_password)
        hosts = {
            "redis:6379": f"127.0.0.1:{redis_server.port}",
            "mlflow:5000": f"127.0.0.1:{registry.server.port}",
        }
        compose = Compose(base, hosts)
        name = "statpair-policy"

        # the trainer trains (tiny), writes its runs and checkpoint in its volume, registers
        tiny = "--episodes 2 --episode-length 64 --learning-starts 32 --batch-size 16 --buffer-size 1000 "
        tiny += "--eval-every 1 --eval-episodes 2 --eval-length 64"
        command = compose.command("trainer", *tiny.split())
        assert f"--register={name}" in command
        trained = compose.run(command)
        assert trained.returncode == 0, trained.stderr[-3000:]
        data = compose.volumes["trainer-data"]
        (run,) = (data / "runs").iterdir()
        assert (run / "best.pt").exists() and (data / "models" / "policy.pt").exists()
        assert list(compose.cwd.iterdir()) == []
        assert f"as version 1 of {name}" in trained.stdout, trained.stdout
        (version,) = Registry(registry.url).versions(name)
        assert version.run_id is not None and f"run {version.run_id})" in trained.stdout

        # the one-off registry service promotes it
        promoted = compose.run(
            compose.command("registry", args=["promote", name, str(version.version), "--force"])
        )
        assert promoted.returncode == 0, promoted.stderr[-3000:]
        assert f"{name}@champion" in promoted.stdout and f"version {version.version}" in promoted.stdout

        # a worker reads the registry, caches the version in its volume, answers with it
        r = Redis(host="127.0.0.1", port=redis_server.port, password=redis_password)
        await r.xadd("statpair:states", {"state": json.dumps(STATE), "id": "compose-1"})
        worker_cmd = compose.command("worker", "--max-messages", "1", env={"METRICS_PORT": str(free_port())})
        served = await asyncio.to_thread(compose.run, worker_cmd)
        assert served.returncode == 0, served.stderr[-3000:]
        ((_, fields),) = await r.xrange("statpair:actions")
        result = parse_result(fields)
        await r.aclose()
        assert (result.status, result.model_version) == ("ok", str(version.version))
        cached = compose.volumes["model-cache"] / name / str(version.version)
        assert (cached / "version.json").exists()
        assert list(compose.cwd.iterdir()) == []
    finally:
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_per_pair_models_and_a_challenger_from_the_registry(
    registry: Registry_, trained: Trained, real_redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """One registered model per pair (PAIR_MODEL_URIS), a challenger alias
    (CHALLENGER_URIS), no default: each pair answered by its own version."""
    from tests.conftest import write_model
    from tests.test_pairs import contract_for

    uris, shas = [], {}
    for i, pair in enumerate(["KO/PEP", "XOM/CVX"]):
        name = unique(f"pair{i}")
        path = write_model(tmp_path / f"{i}.pt", seed=20 + i, contract=contract_for(pair))
        v = register(name, path, trained.run_id, GOOD, tracking_uri=registry.url).version
        assert v is not None
        Registry(registry.url).promote(name, v.version, "champion")
        uris.append(f"models:/{name}@champion")
        shas[pair] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    challenger = unique("chall")
    cpath = write_model(tmp_path / "c.pt", seed=30, contract=contract_for("KO/PEP"))
    cv = register(challenger, cpath, trained.run_id, GOOD, tracking_uri=registry.url).version
    assert cv is not None
    Registry(registry.url).promote(challenger, cv.version, "challenger")
    s = make_settings(
        tmp_path,
        redis_url=redis_url,
        mlflow_tracking_uri=registry.url,
        model_cache_dir=tmp_path / "cache",
        registry_poll_s=POLL_S,
        pair_model_uris=",".join(uris),
        challenger_uris=f"models:/{challenger}@challenger",
    )
    async with workers([s]) as (server,):
        await wait_for(lambda: len(server.state.models.champions()) == 2, timeout=60, what="both pair models")
        await wait_for(
            lambda: server.state.models.challenger_for("KO/PEP") is not None, timeout=60, what="challenger"
        )
        for pair in shas:
            await real_redis.xadd("statpair:states", {"state": json.dumps(STATE), "id": pair, "pair": pair})
        await wait_for(lambda: real_redis.xlen("statpair:actions"), timeout=30, what="answers")
        await wait_for(lambda: _len_at_least(real_redis, 2), timeout=30, what="two answers")
        by_pair = {
            r.pair: r for r in (parse_result(f) for _, f in await real_redis.xrange("statpair:actions"))
        }
        assert {p: r.model_sha256 for p, r in by_pair.items()} == shas
        assert all(r.model_version == "1" for r in by_pair.values())
        await wait_for(
            lambda: (server.state.shadow.status()["pairs"].get("KO/PEP") or {}).get("states") == 1,
            what="the challenger scored",
        )


async def _len_at_least(redis: Redis, n: int) -> bool:
    return await redis.xlen("statpair:actions") >= n


def test_one_model_gets_one_verdict_line_from_train_evaluate_wftable_and_promote(
    registry: Registry_, tmp_path: Path
) -> None:
    """On MRK/PFE, agent.wftable printed three 'yes', agent.evaluate compared the policy with
    the tuned rule only, and the registry's guard judged against yet another rule. Now one
    function decides, and each tool prints its line."""
    csv = ROOT / "tests" / "data" / "sp500_nasdaq_2017_2018.csv"
    name = unique("verdict")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODEL_"))}
    env.update({"MLFLOW_TRACKING_URI": registry.url, "MLFLOW_EXPERIMENT_NAME": "verdict-tests"})
    tiny = "--episodes 2 --episode-length 64 --learning-starts 32 --batch-size 16 --buffer-size 1000 "
    tiny += "--eval-every 1 --bc-steps 20 --quiet"
    out = tmp_path / "m.pt"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )

    trained = run(
        "agent.train",
        *tiny.split(),
        "--csv",
        str(csv),
        "--out",
        str(out),
        "--run-dir",
        str(tmp_path / "runs"),
        "--register",
        name,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    said = trained.stdout.strip().splitlines()[-1]
    assert said.startswith("verdict: ")
    (best,) = (tmp_path / "runs").glob("*/best.pt")
    evaluated = run("agent.evaluate", str(best), "--csv", str(csv), "--json", str(tmp_path / "e.json"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    tabled = run("agent.wftable", str(tmp_path / "e.json"))
    assert tabled.returncode == 0, tabled.stderr[-3000:]
    promoted = run("tracking.registry", "promote", name, "1")
    lines = {
        "train": said,
        "evaluate": evaluated.stdout.strip().splitlines()[-1],
        "wftable": next(x for x in tabled.stdout.splitlines() if x.startswith("verdict: ")),
        "promote": promoted.stdout.splitlines()[0],
    }
    with contextlib.suppress(Exception):
        print("\n" + "\n".join(f"{tool}: {line}" for tool, line in lines.items()))
    assert len(set(lines.values())) == 1, lines
    assert promoted.returncode == (0 if said == "verdict: serve" else 1)
