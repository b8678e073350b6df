"""``python -m bench chaos``: the faults a deployment meets, each against a redis-server
this command starts on a free loopback port (never another server), with worker
processes it starts and ends by PID: a worker SIGKILLed and restarted, a worker paused
(SIGSTOP) past CLAIM_IDLE_MS, Redis restarted (append-only file kept), Redis full
(maxmemory, noeviction) then given room. For each scenario: states sent, answered,
lost (sent and never answered), duplicated (answered more than once) and dead-lettered.

Every loop is bounded in count and time; a scenario that does not settle within
``--settle`` seconds reports what it has (lost counts what is missing then)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.redis_process import find_binary, free_port

SCENARIOS = ("kill", "pause", "restart", "full")
STATE = np.linspace(-1.0, 1.0, 28).astype("<f4").tobytes()


@dataclass
class Outcome:
    scenario: str
    sent: int
    answered: int
    lost: int
    duplicated: int
    dead_lettered: int
    seconds: float
    note: str


class Server:
    """One redis-server with an append-only file in ``folder``, restartable on its port."""

    def __init__(self, folder: Path) -> None:
        self.binary = find_binary("redis-server")
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", ""]
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        _until(lambda: _pings(client), 30, "redis-server to answer")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


def connect(url: str) -> redis.Redis:
    """A client that rides out a restart of the server (reconnects and retries, bounded):
    redis-py before 8.2 does not retry a command on a connection the server closed."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Fleet:
    """The scenario's worker processes, each with its log; ended by PID."""

    def __init__(self, url: str, model: Path, folder: Path, workers: int) -> None:
        self.url, self.model, self.folder = url, model, folder
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        for i in range(workers):
            self.start(i)

    def env(self, i: int) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "REDIS_", "STAT_PAIR"))}
        return keep | {
            "REDIS_URL": self.url,
            "MODEL_PATH": str(self.model),
            "CONSUMER": f"w{i}",
            "CLAIM_IDLE_MS": "1000",
            "CLAIM_INTERVAL_S": "0.5",
            "HEARTBEAT_TTL_S": "3",
            "RESULTS_MAXLEN": "10000000",
            "LOG_LEVEL": "WARNING",
        }

    def start(self, i: int) -> None:
        log = (self.folder / f"w{i}.log").open("ab")
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            env=self.env(i),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, i: int, sig: int) -> None:
        proc = self.procs[i]
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            if sig == signal.SIGKILL:
                proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def answered(client: redis.Redis) -> Counter[str]:
    """Results per entry id, every result stream read (paged, bounded)."""
    out: Counter[str] = Counter()
    last = "-"
    for _ in range(100_000):
        page: Any = client.xrange("statpair:actions", min=last, count=5000)
        if last != "-":
            page = page[1:]
        if not page:
            break
        for _, fields in page:
            out[fields[b"entry_id"].decode()] += 1
        last = page[-1][0].decode()
    return out


def produce(url: str, n: int, rate: float, fault_at: dict[int, Callable[[], None]]) -> list[str]:
    """``n`` states at about ``rate`` a second, in chunks; ``fault_at[k]`` runs once k are
    sent. A refused XADD (Redis full, restarting) is retried, bounded, as a client would."""
    client = connect(url)
    ids: list[str] = []
    chunk = 50
    started = time.monotonic()
    for start in range(0, n, chunk):
        for k, fault in list(fault_at.items()):
            if start >= k:
                fault()
                del fault_at[k]
        for attempt in range(600):  # 30 s of retries at most
            try:
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(n, start + chunk)):
                    pipe.xadd("statpair:states", {"state_f32": STATE, "id": f"s{i}"})
                ids += [x.decode() for x in pipe.execute()]
                break
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
                if attempt == 599:
                    raise
                time.sleep(0.05)
        ahead = started + (start + chunk) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    client.close()
    return ids


def run(scenario: str, n: int, rate: float, settle: float, workers: int, model: Path, base: Path) -> Outcome:
    folder = base / scenario
    folder.mkdir(parents=True)
    server = Server(folder)
    fleet = Fleet(server.url, model, folder, workers)
    admin = connect(server.url)
    note = ""
    try:
        _until(lambda: len(admin.keys("statpair:workers:*")) >= workers, 120, "the workers to start")
        faults: dict[int, Callable[[], None]] = {}
        if scenario == "kill":

            def kill_and_restart() -> None:
                fleet.signal(0, signal.SIGKILL)
                fleet.start(0)

            faults = {n // 3: kill_and_restart, 2 * n // 3: kill_and_restart}
            note = "w0 SIGKILLed twice, restarted each time"
        elif scenario == "pause":
            faults = {
                n // 3: lambda: fleet.signal(0, signal.SIGSTOP),
                2 * n // 3: lambda: fleet.signal(0, signal.SIGCONT),
            }
            note = "w0 SIGSTOPped for a third of the run (CLAIM_IDLE_MS 1000), then SIGCONT"
        elif scenario == "restart":

            def restart() -> None:
                server.stop()
                server.start()

            faults = {n // 2: restart}
            note = "redis-server stopped and started again (appendonly, appendfsync always)"
        elif scenario == "full":

            def fill() -> None:
                used = int(admin.info("memory")["used_memory"])
                admin.config_set("maxmemory-policy", "noeviction")
                admin.config_set("maxmemory", str(used + 200_000))

            def room() -> None:
                admin.config_set("maxmemory", "0")

            faults = {n // 3: fill, 2 * n // 3: room}
            note = "maxmemory just above use for a third of the run (noeviction), then lifted"
        t0 = time.monotonic()
        ids = produce(server.url, n, rate, faults)
        deadline = time.monotonic() + settle
        got: Counter[str] = Counter()
        while time.monotonic() < deadline:
            got = answered(admin)
            if all(got[i] for i in ids):
                break
            time.sleep(0.2)
        seconds = time.monotonic() - t0
        got = answered(admin)
        dead = int(admin.xlen("statpair:states:dead"))
        return Outcome(
            scenario,
            sent=len(ids),
            answered=sum(1 for i in ids if got[i]),
            lost=sum(1 for i in ids if not got[i]),
            duplicated=sum(got[i] - 1 for i in ids if got[i] > 1),
            dead_lettered=dead,
            seconds=round(seconds, 1),
            note=note,
        )
    finally:
        fleet.stop()
        admin.close()
        server.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated of {', '.join(SCENARIOS)}"
    )
    p.add_argument("--states", type=int, default=3000, help="states sent per scenario (default 3000)")
    p.add_argument("--rate", type=float, default=1000.0, help="states a second (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the last answers")
    p.add_argument("--json", type=Path, default=None, help="write the outcomes here")


def main(args: argparse.Namespace) -> int:
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        print(
            f"error: --scenarios takes {', '.join(SCENARIOS)}; not {', '.join(unknown) or 'nothing'}",
            file=sys.stderr,
        )
        return 2
    if args.states < 30 or args.workers < 1 or args.rate <= 0:
        print("error: --states at least 30, --workers at least 1, --rate above 0", file=sys.stderr)
        return 2
    import torch

    from agent.actor import SACActor
    from agent.checkpoint import save_checkpoint
    from agent.env import PairConfig

    outcomes = []
    with tempfile.TemporaryDirectory(prefix="statpair-chaos-") as tmp:
        base = Path(tmp)
        torch.manual_seed(0)
        model = save_checkpoint(SACActor(), base / "model.pt", {"seed": 0}, contract=PairConfig().contract())
        head = f"{'scenario':<9} {'sent':>6} {'answered':>9} {'lost':>5} {'duplicated':>11} {'dead':>5}"
        print(f"{head} {'s':>6}  what")
        for scenario in chosen:
            out = run(scenario, args.states, args.rate, args.settle, args.workers, model, base)
            outcomes.append(out)
            print(
                f"{out.scenario:<9} {out.sent:>6} {out.answered:>9} {out.lost:>5} {out.duplicated:>11} "
                f"{out.dead_lettered:>5} {out.seconds:>6.1f}  {out.note}",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2) + "\n")
    return 1 if any(o.lost for o in outcomes) else 0
