"""Shared fixtures: fakeredis for unit tests, a throwaway redis-server for
integration tests, settings built directly, small checkpoints on disk."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import torch
from redis.asyncio import Redis

from agent.actor import SACActor
from agent.checkpoint import save_checkpoint
from agent.contract import PairContract
from agent.env import PairConfig
from tests.servers import start_redis
from worker.settings import Settings

# Fixtures that start a real server (redis-server, a Redis Cluster, PostgreSQL, an mlflow
# server): a test that uses one, directly or through another fixture, is an integration
# test whatever its file says, and `make test-fast` (the unit tier) leaves it out. A test
# that starts a server in its body carries the mark itself.
SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "own_redis",
        "acl_redis",
        "tls_redis",
        "cluster3",
        "cluster33",
        "acl_cluster",
        "postgres_uri",
        "mlflow_server",
        "registry",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def fake_redis() -> AsyncIterator[Redis]:
    client = fakeredis.FakeAsyncRedis(decode_responses=False)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One throwaway redis-server for the session (pytest-redis's executor)."""
    executor = start_redis(tmp_path_factory.mktemp("redis"))
    yield executor
    executor.stop()


@pytest.fixture
async def real_redis(redis_server: Any) -> AsyncIterator[Redis]:
    client = Redis(host=redis_server.host, port=redis_server.port, decode_responses=False)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    return f"redis://{redis_server.host}:{redis_server.port}/0"


CONTRACT = PairConfig().contract()  # a model trained on the default synthetic pair


@pytest.fixture
def mlflow_settings_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registry tightens MLflow's HTTP variables process-wide (setdefault) and
    quiets urllib3's retry lines: undo both, so the tracker's tests see their own."""
    for name in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    urllib3 = logging.getLogger("urllib3.connectionpool")
    level = urllib3.level
    yield
    urllib3.setLevel(level)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_dir": tmp_path / "models",
        "consumer": "w1",
        "block_ms": 50,
        "watch_interval_s": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


def write_model(
    path: Path, seed: int = 0, state_dim: int = 28, hidden=(16, 16), contract: PairContract | None = None
) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(
        SACActor(state_dim=state_dim, hidden=hidden),
        path,
        {"created_utc": "2026-01-01T00:00:00+00:00", "seed": seed},
        contract=contract or CONTRACT,
    )


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
