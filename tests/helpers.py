"""Helpers for tests that run a worker: in-process (``serving``) or as a real
`python -m worker` process (``WorkerProcess``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import redis

from bench.e2e.workers import Workers
from tests.servers import wait_until

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.server import Server
    from worker.settings import Settings


@asynccontextmanager
async def serving(settings: Settings, redis: Redis | None = None) -> AsyncIterator[Server]:
    """A worker (``worker.server.Server``) serving in this event loop until the block
    ends; then stopped as a signal would, and awaited."""
    from worker.server import Server

    stop = asyncio.Event()
    server = Server(settings, redis, stop=stop)
    task = asyncio.create_task(server.serve())
    try:
        yield server
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """`python -m worker` in a subprocess, its log in a file; ended by its PID only."""

    def __init__(self, log: Path, **env: str) -> None:
        self.log_path = log
        self._log = log.open("wb")
        full = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "STAT_PAIR", "MODEL_", "REDIS_"))
        }
        full.update({"LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", **env})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker"], cwd=ROOT, env=full, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0, count: int = 1) -> None:
        def logged() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited {self.proc.returncode} before logging {text!r}:\n" + self.log()[-3000:]
                )
            return self.log().count(text) >= count

        try:
            wait_until(logged, timeout, what=f"the worker to log {text!r}", interval=0.05)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{self.log()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()


class RecordingWorkers(Workers):
    """A benchmark's own workers, their PIDs kept for a test to check that it ended them."""

    started: ClassVar[list[int]] = []

    def start(self, client: redis.Redis) -> None:
        super().start(client)
        RecordingWorkers.started += self.pids


def gone(pid: int) -> bool:
    """The process has ended and been reaped (not even a zombie)."""
    return not Path(f"/proc/{pid}").exists()
