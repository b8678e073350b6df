"""The registry as a model source, without a server: model URIs and settings, the
verified cache, and the worker's registry source against a stand-in registry
(alias moves, a broken version not retried in a loop, outages said once, cold
starts from the cache, calls that hang), plus provenance in results, status and
metrics. The real MLflow server is in test_registry_server.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import make_settings, write_model
from tracking.registry import (
    Cached,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    VersionInfo,
    cached_versions,
    install,
    parse_uri,
    prune,
    register,
)
from tracking.registry.__main__ import main as registry_cli
from tracking.registry.refs import ModelRef, Move
from worker.control import status
from worker.metrics import Metrics
from worker.model import ModelManager
from worker.registry_source import RegistrySource
from worker.settings import Settings, describe
from worker.state import ServerState

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("mlflow_settings_restored")


# -- model URIs and settings ---------------------------------------------------------------


def test_model_uris() -> None:
    assert parse_uri("models:/statpair-policy@champion") == ModelRef("statpair-policy", alias="champion")
    assert parse_uri(" models:/p.v2/7 ") == ModelRef("p.v2", version=7)
    assert str(parse_uri("models:/a/3")) == "models:/a/3"
    for bad in ("runs:/x/policy", "models:/x", "models:/x/0", "models:/x/v3", "models:/../x@a", "models:/x@"):
        with pytest.raises(ValueError, match="must be"):
            parse_uri(bad)
    with pytest.raises(ValueError, match="neither 'latest'"):
        parse_uri("models:/x@latest")


def _error(**values: str) -> str:
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    return describe(info.value)


def test_settings_for_the_registry(tmp_path: Path) -> None:
    assert _error(model_uri="models:/x@champion") == (
        "invalid configuration: MLFLOW_TRACKING_URI must name the MLflow server that holds the registry "
        "when MODEL_URI is set."
    )
    assert _error(model_uri="models:/x", mlflow_tracking_uri="http://127.0.0.1:5000").startswith(
        "invalid configuration: MODEL_URI='models:/x' must be models:/<name>@<alias> or"
    )
    shown = _error(model_uri="models:/x@c", mlflow_tracking_uri="http://u:s3cret@h:5000", registry_poll_s="0")
    assert shown == "invalid configuration: REGISTRY_POLL_S='0' input should be greater than 0."
    s = Settings(
        model_uri="models:/x@champion", mlflow_tracking_uri="http://me:s3cret@h:5000", model_cache_dir="~/c"
    )
    assert s.model_cache_dir == Path.home() / "c" and s.mlflow_tracking_uri_masked == "http://me:***@h:5000"
    assert Settings(model_uri=" ").model_uri is None  # blank is unset: the folder source


def test_a_registry_uri_brings_in_the_registry_module_only() -> None:
    code = (
        "import sys\n"
        "from worker.settings import Settings\n"
        "from worker.model import ModelManager\n"
        "s = Settings(model_uri='models:/x@champion', mlflow_tracking_uri='http://127.0.0.1:9')\n"
        "m = ModelManager.from_settings(s)\n"
        "assert m.source.kind == 'registry'\n"
        "f = ModelManager.from_settings(Settings()).source.kind\n"
        "print(f, sorted(k for k in sys.modules if k.split('.')[0] in ('tracking', 'mlflow')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODEL_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    folder, modules = out.stdout.split(" ", 1)
    assert folder == "folder"
    loaded = eval(modules)  # a printed list of names
    assert "tracking.registry" in loaded
    assert not [
        m for m in loaded if m.startswith("mlflow") or m in ("tracking.mlflow_tracker", "tracking.calls")
    ]


# -- the cache ------------------------------------------------------------------------------


def _info(name: str, version: int, data: bytes, **tags: str) -> VersionInfo:
    tags = {"sha256": hashlib.sha256(data).hexdigest(), "checkpoint": "policy.pt", **tags}
    return VersionInfo(name, version, "READY", f"fake://{name}/{version}", f"run{version}", tags)


def _fetch(data: bytes, calls: list[Path] | None = None):
    def fetch(dest: Path) -> Path:
        if calls is not None:
            calls.append(dest)
        folder = dest / "registered-model"
        folder.mkdir(parents=True)
        (folder / "policy.pt").write_bytes(data)
        return folder

    return fetch


def test_install_verifies_and_renames_into_place(tmp_path: Path) -> None:
    calls: list[Path] = []
    entry = install(tmp_path, _info("m", 3, b"abc"), _fetch(b"abc", calls))
    assert entry.path == tmp_path / "m" / "3" / "policy.pt" and entry.path.read_bytes() == b"abc"
    assert entry.run_id == "run3" and entry.sha256 == hashlib.sha256(b"abc").hexdigest()
    again = install(tmp_path, _info("m", 3, b"abc"), _fetch(b"abc", calls))
    assert again.path == entry.path and len(calls) == 1  # a cache hit downloads nothing
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["3"]  # no temporary folder left


def test_install_refuses_a_download_that_does_not_match(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"sha256 .* does not match the .* recorded at registration"):
        install(tmp_path, _info("m", 1, b"what was registered"), _fetch(b"something else"))
    with pytest.raises(RegistryError, match="has no sha256 tag"):
        install(tmp_path, VersionInfo("m", 2, "READY", "x", None, {}), _fetch(b"x"))
    assert list((tmp_path / "m").iterdir()) == []  # nothing half-made is left to be served


def test_cached_versions_newest_first_and_pruned(tmp_path: Path) -> None:
    for v in (1, 2, 10, 4):
        install(tmp_path, _info("m", v, bytes([v])), _fetch(bytes([v])))
    (tmp_path / "m" / "7").mkdir()  # a folder without its version.json is not a version
    assert [c.version for c in cached_versions(tmp_path, "m")] == [10, 4, 2, 1]
    assert cached_versions(tmp_path, "other") == []
    assert prune(tmp_path, "m", keep={1}, newest=2) == [2]
    assert [c.version for c in cached_versions(tmp_path, "m")] == [10, 4, 1]


# -- the worker's registry source, against a stand-in registry ---------------------------------


class FakeRegistry:
    """Answers like tracking.registry.Registry; ``down`` makes it unreachable, ``hang``
    makes a call wait until released."""

    def __init__(self) -> None:
        self.files: dict[int, bytes] = {}
        self.tags: dict[int, dict[str, str]] = {}
        self.alias: int | None = None
        self.down = False
        self.hang: threading.Event | None = None
        self.resolves = 0
        self.downloads: list[int] = []

    def add(self, version: int, data: bytes, **tags: str) -> None:
        self.files[version] = data
        self.tags[version] = tags

    def resolve(self, ref: ModelRef) -> VersionInfo:
        self.resolves += 1
        if self.hang is not None:
            self.hang.wait(30)
        if self.down:
            raise RegistryUnavailable("resolving: Connection refused (http://fake)")
        version = ref.version or self.alias
        if version is None or version not in self.files:
            raise NotFound(f"resolving {ref}: alias {ref.alias} not found")
        return _info(ref.name, version, self.files[version], **self.tags[version])

    def download(self, info: VersionInfo, dest: Path) -> Path:
        if self.down:
            raise RegistryUnavailable("downloading: Connection refused (http://fake)")
        self.downloads.append(info.version)
        return _fetch(self.files[info.version])(dest)


def _source(
    tmp_path: Path, fake: FakeRegistry, uri: str = "models:/pol@champion", **kw: float
) -> RegistrySource:
    values = {"poll_s": 0.0, "timeout_s": 5.0, "retry_failed_s": 3600.0, **kw}
    source = RegistrySource(parse_uri(uri), "http://fake", tmp_path / "cache", **values)
    source._connect = lambda: fake  # type: ignore[method-assign]
    return source


@pytest.fixture
def fake(tmp_path: Path) -> FakeRegistry:
    registry = FakeRegistry()
    for v in (1, 2):
        registry.add(v, write_model(tmp_path / f"v{v}.pt", seed=v).read_bytes())
    registry.alias = 1
    return registry


def _served(models: ModelManager) -> str | None:
    return models.current.version if models.current else None


async def test_follows_the_alias_with_provenance(tmp_path: Path, fake: FakeRegistry) -> None:
    models = ModelManager(None, tmp_path, False, source=_source(tmp_path, fake))
    assert await models.check() and _served(models) == "1"
    m = models.current
    assert m.fields["model_version"] == "1" and m.run_id == "run1"
    assert m.provenance == {
        "source": "registry",
        "uri": "models:/pol@champion",
        "name": "pol",
        "version": "1",
        "run_id": "run1",
    }
    assert not await models.check()  # the alias has not moved: nothing reloaded
    fake.alias = 2
    assert await models.check() and _served(models) == "2" and models.reloads == 2
    assert fake.downloads == [1, 2]
    fake.alias = 1  # a rollback: already cached, no download
    assert await models.check() and _served(models) == "1" and fake.downloads == [1, 2]
    folder = ModelManager(None, tmp_path / "none", False)
    assert folder.source.kind == "folder" and folder.source.status()["model_dir"] == str(tmp_path / "none")


async def test_pinned_version_ignores_the_alias(tmp_path: Path, fake: FakeRegistry) -> None:
    models = ModelManager(None, tmp_path, False, source=_source(tmp_path, fake, "models:/pol/2"))
    assert await models.check() and _served(models) == "2"
    fake.alias = 1
    assert not await models.check() and _served(models) == "2"


async def test_a_broken_version_is_not_retried_in_a_loop(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    source = _source(tmp_path, fake)
    models = ModelManager(None, tmp_path, False, source=source)
    await models.check()
    fake.add(3, b"not a checkpoint at all")
    fake.alias = 3
    for _ in range(6):
        assert not await models.check()
    assert _served(models) == "1" and models.reload_failures == 1
    assert fake.resolves == 7 and fake.downloads == [1, 3]  # asked every poll, fetched and tried once
    assert "not a readable checkpoint" in models.last_error
    assert caplog.text.count("model load failed") == 1
    assert "keeping version 1; it is tried again when models:/pol@champion moves or in 3600 s" in caplog.text
    assert list(source.status()["failed_versions"]) == ["3"]
    assert (tmp_path / "cache" / "pol" / "3" / "rejected.txt").exists()
    fake.alias = 2  # the alias moves on: the new version is tried
    assert await models.check() and _served(models) == "2"
    fake.alias = 3  # and back: moving the alias is a new attempt
    assert not await models.check() and models.reload_failures == 2
    assert await models.check(force=True) is False and models.reload_failures == 3  # a reload command retries


async def test_a_download_that_does_not_match_its_sha256(tmp_path: Path, fake: FakeRegistry) -> None:
    models = ModelManager(None, tmp_path, False, source=_source(tmp_path, fake))
    await models.check()
    fake.add(3, b"registered bytes")
    fake.alias = 3
    fake.download = lambda info, dest: _fetch(b"tampered bytes")(dest)  # type: ignore[method-assign]
    for _ in range(3):
        await models.check()
    assert _served(models) == "1" and models.reload_failures == 1
    assert "does not match" in models.last_error and "models:/pol@champion → version 3" in models.last_error
    assert sorted(p.name for p in (tmp_path / "cache" / "pol").iterdir()) == ["1"]


async def test_an_outage_is_said_once_and_recovers(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source = _source(tmp_path, fake)
    models = ModelManager(None, tmp_path, False, source=source)
    await models.check()
    fake.down = True
    for _ in range(5):
        assert not await models.check()
    assert _served(models) == "1" and models.reload_failures == 0
    st = source.status()
    assert st["registry_up"] is False and st["outages"] == 1 and st["down_since_utc"]
    assert "Connection refused" in st["last_registry_error"]
    assert caplog.text.count("does not answer") == 1
    assert "serving version 1 of pol meanwhile" in caplog.text
    fake.down = False
    fake.alias = 2
    assert await models.check() and _served(models) == "2"
    assert source.status()["registry_up"] is True and "answers again" in caplog.text
    fake.down = True
    await models.check()
    assert source.status()["outages"] == 2 and caplog.text.count("does not answer") == 2


async def test_cold_start_with_the_registry_down(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    first = ModelManager(None, tmp_path, False, source=_source(tmp_path, fake))
    await first.check()
    fake.alias = 2
    await first.check()
    fake.down = True
    source = _source(tmp_path, fake)  # a restart: same cache, registry down
    models = ModelManager(None, tmp_path, False, source=source)
    assert await models.check() and _served(models) == "2"
    assert source.status()["serving_cached"] is True
    assert "the registry does not answer: serving version 2 of pol, the newest in the cache" in caplog.text
    fake.down = False  # back, and the alias still says 2: nothing to reload
    assert not await models.check() and models.reloads == 1
    assert source.status()["serving_cached"] is False and source.status()["resolved_version"] == 2


async def test_cold_start_skips_a_cached_version_that_failed(tmp_path: Path, fake: FakeRegistry) -> None:
    first = ModelManager(None, tmp_path, False, source=_source(tmp_path, fake))
    await first.check()
    fake.add(3, b"garbage")
    fake.alias = 3
    await first.check()
    assert first.reload_failures == 1
    fake.down = True
    models = ModelManager(None, tmp_path, False, source=_source(tmp_path, fake))
    assert await models.check() and _served(models) == "1"


async def test_cold_start_without_cache_waits_for_the_registry(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    fake.down = True
    models = ModelManager(None, tmp_path, False, source=_source(tmp_path, fake))
    for _ in range(3):
        assert not await models.check()
    assert models.current is None
    assert caplog.text.count("no usable model at models:/pol@champion (http://fake) yet") == 1
    fake.down = False
    assert await models.check() and _served(models) == "1"


async def test_alias_not_set_is_said_once(
    tmp_path: Path, fake: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    fake.alias = None
    source = _source(tmp_path, fake)
    models = ModelManager(None, tmp_path, False, source=source)
    for _ in range(3):
        assert not await models.check()
    assert caplog.text.count("alias champion not found; answering model_unavailable meanwhile") == 1
    assert source.status()["registry_up"] is True


async def test_a_hanging_registry_never_stalls_the_loop(tmp_path: Path, fake: FakeRegistry) -> None:
    source = _source(tmp_path, fake, timeout_s=0.2)
    models = ModelManager(None, tmp_path, False, source=source)
    await models.check()
    fake.hang = threading.Event()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        assert not await asyncio.wait_for(models.check(), 30)  # bounded by timeout_s, not by the hang
        assert ticks >= 1  # the event loop ran meanwhile: the hung call did not block it
        assert source.status()["registry_up"] is False
        assert "no answer within 0.2 s" in source.status()["last_registry_error"]
        calls = fake.resolves
        assert not await asyncio.wait_for(models.check(), 30)
        assert fake.resolves == calls  # the stuck call is not joined by another
        assert "has not returned yet" in source.status()["last_registry_error"]
    finally:
        fake.hang.set()
        task.cancel()
    assert _served(models) == "1"


# -- provenance in status and metrics -----------------------------------------------------------


async def test_status_and_metrics_show_where_the_model_came_from(
    tmp_path: Path, fake: FakeRegistry, fake_redis
) -> None:
    source = _source(tmp_path, fake)
    models = ModelManager(None, tmp_path, False, source=source)
    await models.check()
    state = ServerState(make_settings(tmp_path), fake_redis, models)
    reply = json.loads(json.dumps(status(state), default=str))
    assert {k: reply["model"][k] for k in ("source", "name", "version", "run_id")} == {
        "source": "registry",
        "name": "pol",
        "version": "1",
        "run_id": "run1",
    }
    assert reply["source"]["kind"] == "registry" and reply["source"]["registry_up"] is True
    assert reply["source"]["resolved_version"] == 1
    metrics = Metrics()
    metrics.on_model(state.models)
    metrics.sync(state)
    text = _exposition(metrics)
    assert 'version="1"' in text and 'run_id="run1"' in text and 'source="registry"' in text
    assert "statpair_registry_up 1.0" in text
    fake.down = True
    await models.check()
    metrics.sync(state)
    assert "statpair_registry_up 0.0" in _exposition(metrics)


async def test_a_folder_worker_has_no_registry_gauge(tmp_path: Path, fake_redis) -> None:
    write_model(tmp_path / "models" / "policy.pt")
    s = make_settings(tmp_path)
    models = ModelManager(s.model_path, s.model_dir, False)
    await models.check()
    state = ServerState(s, fake_redis, models)
    metrics = Metrics()
    metrics.on_model(state.models)
    metrics.sync(state)
    text = _exposition(metrics)
    assert "statpair_registry_up" not in text and 'source="folder"' in text
    assert "model_version" not in models.current.fields
    assert status(state)["source"] == {"kind": "folder", "model_dir": str(s.model_dir)}


def _exposition(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


# -- registration and the command line, without a server ----------------------------------------


def test_register_never_fails_for_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = write_model(tmp_path / "best.pt")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = register("pol", checkpoint, "run1", {})
    assert out.version is None and out.note == (
        "registration as pol skipped: MLFLOW_TRACKING_URI is not set; "
        f"the checkpoint is still at {checkpoint}"
    )
    out = register("pol", checkpoint, None, {}, tracking_uri="http://127.0.0.1:9")
    assert out.version is None and "the run was not tracked" in out.note
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = register("pol", checkpoint, "run1", {"test_sharpe": 1.0}, tracking_uri="http://127.0.0.1:9")
    assert out.version is None and "Connection refused" in out.note and str(checkpoint) in out.note
    with pytest.raises(ValueError, match="model name"):
        register("no/slashes", checkpoint, "run1", {})


def test_the_command_line_without_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry_cli(["list", "pol"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: set MLFLOW_TRACKING_URI to the MLflow server that holds the registry"
    )
    with pytest.raises(SystemExit) as exit_:
        registry_cli(["promote", "pol", "3", "--alias", "v3"])
    assert exit_.value.code == 2 and "neither 'latest' nor v<number>" in capsys.readouterr().err


def test_moves_describe_themselves() -> None:
    assert Move("pol", "champion", 2, 3).describe() == "pol@champion: version 2 → version 3"
    assert Move("pol", "champion", None, 1).describe() == "pol@champion: unset → version 1"
    assert "nothing moved" in Move("pol", "champion", 3, 3).describe()


def test_a_cached_entry_is_only_whole(tmp_path: Path) -> None:
    entry = install(tmp_path, _info("m", 1, b"x"), _fetch(b"x"))
    assert isinstance(entry, Cached) and entry.rejected is None
    (entry.folder / "policy.pt").unlink()
    assert cached_versions(tmp_path, "m") == []
