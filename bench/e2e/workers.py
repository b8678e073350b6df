"""The worker processes a scenario runs (``python -m worker``), configured through
their settings' environment names, on streams under a key prefix of their own
(on a cluster: REDIS_CLUSTER=1, SHARDS, and SERVE_SHARDS all or split)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from bench.e2e.scenarios import Scenario
from worker.settings import env_name

READY_SECONDS = 120  # loading and scripting the model, on a busy machine

# Inherited settings that would pick another model than the benchmark's.
_MODEL_SOURCE = (
    "model_path",
    "model_dir",
    "model_uri",
    "pair_model_uris",
    "challenger_uris",
    "mlflow_tracking_uri",
    "jit",
)


@dataclass(frozen=True)
class Keys:
    """Every Redis key of one scenario starts with ``prefix``, so it can be deleted after."""

    prefix: str

    @classmethod
    def new(cls) -> Keys:
        return cls(f"bench:{uuid.uuid4().hex[:8]}")

    @property
    def states(self) -> str:
        return f"{self.prefix}:states"

    @property
    def actions(self) -> str:
        return f"{self.prefix}:actions"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def reply_prefix(self) -> str:
        return f"{self.actions}:"

    @property
    def contracts(self) -> str:
        return f"{self.prefix}:contracts"

    @property
    def group(self) -> str:
        return f"{self.prefix}-group"

    @property
    def heartbeat_prefix(self) -> str:
        return f"{self.prefix}:workers:"

    @property
    def patterns(self) -> tuple[str, str]:
        """Every key of the run: as named, and with a shard's hash tag inserted
        after the first ``:`` (``bench:{2}:ab12cd34:states``, worker/shards.py)."""
        head, _, rest = self.prefix.partition(":")
        return f"{self.prefix}:*", f"{head}:{{*}}:{rest}:*"

    def delete_all(self, client: redis.Redis | redis.RedisCluster) -> None:
        """Delete every key of the run (a cluster client scans every primary and
        deletes slot by slot)."""
        keys = [k for pattern in self.patterns for k in client.scan_iter(match=pattern, count=1000)]
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])


class Workers:
    """The scenario's worker processes, each in its own session with its log in
    ``log_dir``. A context manager: on the way out every worker still running gets
    SIGTERM (then SIGKILL after 30 s), by its PID."""

    def __init__(self, url: str, model: Path, keys: Keys, scenario: Scenario, log_dir: Path) -> None:
        self.url, self.model, self.keys, self.sc, self.log_dir = url, model, keys, scenario, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def settings(self, i: int) -> dict[str, object]:
        """Worker ``i``'s settings, by field name of ``worker.settings.Settings``."""
        k = self.keys
        return {
            "redis_url": self.url,
            "redis_cluster": self.sc.cluster,
            "shards": self.sc.shards if self.sc.cluster else 1,
            "serve_shards": serve_shards(i, self.sc) if self.sc.cluster else "all",
            # A file: that model for every state; a folder: its models (per pair, a challenger).
            **({"model_dir": self.model} if self.model.is_dir() else {"model_path": self.model}),
            "jit": self.sc.backend == "jit",
            "states_stream": k.states,
            "results_stream": k.actions,
            "reply_prefix": k.reply_prefix,
            "dead_stream": k.dead,
            "control_stream": f"{k.prefix}:control",
            "control_replies": f"{k.prefix}:control:replies",
            "heartbeat_prefix": k.heartbeat_prefix,
            # Under the prefix too: the default hash is what strategies on this Redis read.
            "contracts_key": k.contracts,
            "group": k.group,
            "consumer": f"w{i}",
            "results_maxlen": max(1_000_000, 2 * self.sc.total),
            "log_level": "WARNING",
            "idle_spin_ms": self.sc.idle_spin_ms,
            # A drain holds the group at the end of the queued states, then moves it back to
            # the start (XGROUP SETID): a trim in between would take the queue away.
            "trim_states": not self.sc.drain,
        }

    def env(self, i: int) -> dict[str, str]:
        """The process environment of worker ``i``: ours, less any inherited model
        choice, plus its settings under their environment names."""
        own = {env_name(f): _env_value(v) for f, v in self.settings(i).items()}
        drop = set(own) | {env_name(f) for f in _MODEL_SOURCE}
        # Settings are read case-insensitively: a lower-case spelling must go too.
        return {k: v for k, v in os.environ.items() if k.upper() not in drop} | own

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def log(self, i: int) -> Path:
        return self.log_dir / f"{self.keys.prefix.replace(':', '-')}-w{i}.log"

    def start(self, client: redis.Redis | redis.RedisCluster) -> None:
        """Start the workers and wait until each has loaded the model (its heartbeat
        names a backend)."""
        for i in range(self.sc.workers):
            with open(self.log(i), "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "worker"],
                        env=self.env(i),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + READY_SECONDS
        beats = [f"{self.keys.heartbeat_prefix}w{i}" for i in range(self.sc.workers)]
        # Every model loaded: with pair models, each of them (no state may meet a pair
        # whose model is still compiling: with no default it would be model_unavailable).
        models = str(self.sc.pairs) if self.sc.models == "pairs" else "1"

        def ready(key: str) -> bool:
            backend, loaded = client.hmget(key, ["backend", "models"])
            return bool(backend) and loaded in (models, models.encode())

        while not all(ready(key) for key in beats):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"worker w{i} exited with {proc.returncode}: {_last_line(self.log(i))}"
                    )
            if time.monotonic() > deadline:
                waiting = [i for i, key in enumerate(beats) if not ready(key)]
                raise TimeoutError(
                    f"workers did not become ready within {READY_SECONDS} s: "
                    + "; ".join(f"w{i}: {_last_line(self.log(i))}" for i in waiting)
                )
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_shards(i: int, sc: Scenario) -> str:
    """Worker ``i``'s SERVE_SHARDS: ``all``, or split, the shards ``s`` with
    ``s % workers == i`` (with more workers than shards, shard ``i % shards``)."""
    if not sc.split or sc.workers <= 1:
        return "all"
    mine = [s for s in range(sc.shards) if s % sc.workers == i] or [i % sc.shards]
    return ",".join(map(str, mine))


def _env_value(value: object) -> str:
    # Settings parse booleans from 1/0 (STAT_PAIR_RL_JIT=1 is the documented spelling).
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _last_line(log: Path) -> str:
    """The worker's last log line: the log folder is removed when the run ends."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
