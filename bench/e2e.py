"""End-to-end latency and throughput through real Redis: producer processes
XADD states (open loop at a fixed rate, or as fast as possible for a count),
N worker processes answer, a collector reads every result. Every figure is
also given as a ratio to the Redis floor measured in the same run.

    python -m bench e2e                      # the default scenarios
    python -m bench e2e --workers 2 --count 100000
    python -m bench e2e --rate 5000 --duration 10 --backend eager
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.embedded import redis_for
from bench.stats import percentiles

MAX_SECONDS = 300  # hard cap on any one phase


@dataclass(frozen=True)
class Scenario:
    name: str
    workers: int = 1
    backend: str = "jit"
    rate: float | None = None  # states/s offered (open loop); None = as fast as possible
    count: int = 100_000  # states when as fast as possible
    duration: float = 10.0  # seconds when at a fixed rate
    producers: int = 1
    idle_spin_ms: float = 0.0  # the workers' IDLE_SPIN_MS
    drain: bool = False  # queue ``count`` states first, then time the workers emptying the queue

    @property
    def total(self) -> int:
        return int(self.rate * self.duration) if self.rate else self.count


DEFAULT_SCENARIOS = [
    Scenario("saturation, 1 worker", workers=1, count=100_000),
    Scenario("saturation, 2 workers", workers=2, count=100_000),
    Scenario("drain, 1 worker", workers=1, count=100_000, drain=True),
    Scenario("drain, 2 workers", workers=2, count=100_000, drain=True),
    Scenario("1000/s, 1 worker", rate=1000, duration=10),
    Scenario("1000/s, 1 worker, spin", rate=1000, duration=10, idle_spin_ms=2.0),
    Scenario("10000/s, 1 worker", rate=10_000, duration=10),
]


# -- producer (its own process) ---------------------------------------------------------------


def _producer(
    url: str, stream: str, tag: str, rate: float | None, count: int, start_ns: int, seed: int, out: Any
) -> None:
    """XADD ``count`` states; each ``id`` carries its send time (ns since epoch)."""
    client = redis.Redis.from_url(url)
    # One connection, commands packed in one write and replies read raw: the load
    # generator stays as light as it can, so the cores go to what is measured.
    conn = client.connection_pool.get_connection()
    conn.connect()  # now: the first state must not carry the connection set-up
    rng = np.random.default_rng(seed)
    states = [rng.standard_normal(28).astype("<f4").tobytes() for _ in range(64)]
    deadline = time.monotonic() + MAX_SECONDS
    gc.freeze()
    gc.disable()  # bounded run: no collector pauses in the sender's pacing
    while time.time_ns() < start_ns:
        time.sleep(min(0.01, max(0.0, (start_ns - time.time_ns()) / 1e9)))
    sent = 0
    cpu0 = time.process_time()
    while sent < count and time.monotonic() < deadline:
        if rate:
            now = time.time_ns()
            due = min(count, int((now - start_ns) * rate / 1e9) + 1)
            if due <= sent:
                time.sleep(max(0.0, (start_ns + sent * 1e9 / rate - now) / 1e9))
                continue
            n = min(due - sent, 500)
        else:
            n = min(count - sent, 200)
        # The send time is taken as the commands leave: a late wake-up of this
        # process is not the system's latency (the pacing still keeps the rate).
        stamp = time.time_ns()
        conn.send_packed_command(
            conn.pack_commands(
                [
                    (
                        "XADD",
                        stream,
                        "*",
                        "state_f32",
                        states[(sent + i) % 64],
                        "id",
                        f"{tag}:{sent + i}:{stamp}",
                    )
                    for i in range(n)
                ]
            )
        )
        for _ in range(n):
            conn.read_response()  # an error reply raises: the run stops with it
        sent += n
    out.put((tag, sent, time.process_time() - cpu0))
    client.connection_pool.release(conn)
    client.close()


# -- the run ---------------------------------------------------------------------------------


class Run:
    def __init__(self, url: str, model: Path, scenario: Scenario, log_dir: Path) -> None:
        self.url, self.model, self.sc = url, model, scenario
        self.prefix = f"bench:{uuid.uuid4().hex[:8]}"
        self.client = redis.Redis.from_url(url)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = log_dir

    def env(self, i: int) -> dict[str, str]:
        p = self.prefix
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "STAT_PAIR"))},
            "REDIS_URL": self.url,
            "MODEL_PATH": str(self.model),
            "STAT_PAIR_RL_JIT": "1" if self.sc.backend == "jit" else "0",
            "STATES_STREAM": f"{p}:states",
            "RESULTS_STREAM": f"{p}:actions",
            "REPLY_PREFIX": f"{p}:actions:",
            "DEAD_STREAM": f"{p}:dead",
            "CONTROL_STREAM": f"{p}:control",
            "CONTROL_REPLIES": f"{p}:control:replies",
            "HEARTBEAT_PREFIX": f"{p}:workers:",
            "GROUP": f"{p}-group",
            "CONSUMER": f"w{i}",
            "RESULTS_MAXLEN": str(max(1_000_000, 2 * self.sc.total)),
            "LOG_LEVEL": "WARNING",
            "IDLE_SPIN_MS": str(self.sc.idle_spin_ms),
        }

    def start_workers(self) -> None:
        for i in range(self.sc.workers):
            log = open(self.log_dir / f"{self.prefix.replace(':', '-')}-w{i}.log", "wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "worker"],
                    env=self.env(i),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        deadline = time.monotonic() + 120
        while True:
            ready = [
                self.client.hget(f"{self.prefix}:workers:w{i}", "backend") for i in range(self.sc.workers)
            ]
            if all(ready):
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited with {proc.returncode}; see {self.log_dir}")
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not become ready within 120 s")
            time.sleep(0.1)

    def stop_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def cpu_seconds(self) -> dict[str, float | None]:
        """CPU seconds used so far by the workers (Linux /proc) and by Redis (INFO cpu)."""
        out: dict[str, float | None] = {"workers": 0.0}
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        for proc in self.procs:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out["workers"] += (int(fields[11]) + int(fields[12])) / tick  # type: ignore[operator]
            except (OSError, IndexError, ValueError):
                out["workers"] = None
                break
        try:
            info = self.client.info("cpu")
            out["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        except (redis.RedisError, KeyError, ValueError):
            out["redis"] = None
        return out

    def cleanup(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            self.client.delete(*keys[i : i + 500])
        self.client.close()

    def send_and_collect(self, total: int, rate: float | None, warmup: bool = False) -> dict[str, Any]:
        sc = self.sc
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        per = [total // sc.producers + (1 if i < total % sc.producers else 0) for i in range(sc.producers)]
        start_ns = time.time_ns() + int(0.3e9)
        tag = "w" if warmup else "m"
        producers = [
            ctx.Process(
                target=_producer,
                args=(
                    self.url,
                    f"{self.prefix}:states",
                    f"{tag}{i}",
                    rate / sc.producers if rate else None,
                    n,
                    start_ns,
                    i,
                    out,
                ),
                daemon=True,
            )
            for i, n in enumerate(per)
        ]
        stream = f"{self.prefix}:actions"
        last = (
            self.client.xinfo_stream(stream)["last-generated-id"].decode()
            if self.client.exists(stream)
            else "0-0"
        )
        for p in producers:
            p.start()
        cpu0 = self.cpu_seconds()
        own0 = time.process_time()
        gc.collect()
        gc.freeze()  # the collector's own GC pauses would show up as latency
        gc.disable()
        # In the loop only the fields needed later are kept: parsing them here would
        # take CPU from the workers and Redis on the same cores while they are measured.
        got: list[tuple[int, bytes, bytes, bytes, bytes, bytes, bytes]] = []
        backlog: list[tuple[float, int]] = []
        deadline = time.monotonic() + MAX_SECONDS
        next_sample = 0.0
        while len(got) < total and time.monotonic() < deadline:
            resp = self.client.xread({stream: last}, count=5000, block=200)
            now = time.time_ns()
            if not warmup and time.monotonic() >= next_sample:
                g = self.client.xinfo_groups(f"{self.prefix}:states")
                backlog.append(
                    ((now - start_ns) / 1e9, (g[0].get("lag") or 0) + g[0]["pending"]) if g else (0, 0)
                )
                next_sample = time.monotonic() + 0.25
            if resp:
                entries = resp[0][1]
                last = entries[-1][0]
                got += [
                    (
                        now,
                        f[b"id"],
                        f[b"status"],
                        f[b"queue_ms"],
                        f.get(b"infer_ms", b"nan"),
                        f.get(b"latency_ms", b"nan"),
                        f.get(b"batch_size", b"0"),
                    )
                    for _, f in entries
                ]
        gc.enable()
        own = time.process_time() - own0
        cpu1 = self.cpu_seconds()
        sent = producer_cpu = 0
        for _ in producers:
            _, n, seconds = out.get(timeout=MAX_SECONDS)
            sent += n
            producer_cpu += seconds
        for p in producers:
            p.join(timeout=30)
        e2e, queue, infer, lat, batch = [], [], [], [], []
        errors, seen = 0, set()
        first_ns = last_ns = 0
        for now, cid_raw, status, q, inf, la, bs in got:
            cid = cid_raw.decode()
            if not cid.startswith(tag):
                continue  # a late warm-up result
            if cid in seen:
                errors += 1  # a duplicate
                continue
            seen.add(cid)
            e2e.append((now - int(cid.rsplit(":", 1)[1])) / 1e6)
            first_ns = first_ns or now
            last_ns = now
            errors += status != b"ok"
            queue.append(float(q))
            infer.append(float(inf))
            lat.append(float(la))
            batch.append(int(bs))
        wall = (last_ns - start_ns) / 1e9 if last_ns else float("nan")
        cpu = cpu_used(cpu0, cpu1, producers=producer_cpu, collector=own)
        return {
            "cpu_s": cpu,
            "sent": sent,
            "received": len(seen),
            "errors": errors,
            "exactly_once": len(seen) == sent and errors == 0,
            "throughput": len(seen) / wall if wall > 0 else 0.0,
            "wall_s": wall,
            "e2e_ms": pct(e2e),
            "queue_ms": pct(queue),
            "infer_ms": pct(infer),
            "latency_ms": pct(lat),
            "mean_batch": float(np.mean(batch)) if batch else 0.0,
            "backlog": backlog,
        }


def drain(run: Run, total: int) -> dict[str, Any]:
    """Queue ``total`` states with no worker reading, start the workers with the group
    held at the end of the stream, then release them together and time them
    emptying the queue (first result to last, by Redis's clock): the workers'
    throughput without a producer on the same cores."""
    states, group = f"{run.prefix}:states", f"{run.prefix}-group"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    producer = ctx.Process(
        target=_producer, args=(run.url, states, "m0", None, total - 1, time.time_ns(), 0, out), daemon=True
    )
    producer.start()
    out.get(timeout=MAX_SECONDS)
    producer.join(timeout=30)
    run.client.xgroup_create(states, group, id="$")
    run.start_workers()
    run.client.xgroup_setid(states, group, id="0")
    cpu0, own0 = run.cpu_seconds(), time.process_time()
    # One more entry wakes every worker blocked on the stream at once.
    run.client.xadd(
        states, {"state_f32": np.zeros(28, "<f4").tobytes(), "id": f"m0:{total - 1}:{time.time_ns()}"}
    )
    stream, last = f"{run.prefix}:actions", "0-0"
    # Results are read once all are in (the timing comes from their ids): reading
    # them meanwhile would take a core's third from the workers and Redis.
    deadline = time.monotonic() + MAX_SECONDS
    while run.client.xlen(stream) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu1, own = run.cpu_seconds(), time.process_time() - own0
    got: list[tuple[bytes, dict[bytes, bytes]]] = []
    while len(got) < total and time.monotonic() < deadline:
        resp = run.client.xread({stream: last}, count=5000, block=200)
        if resp:
            got += resp[0][1]
            last = got[-1][0]
    ids = [f[b"id"] for _, f in got]
    first_ms, last_ms = (int(got[i][0].split(b"-")[0]) for i in (0, -1)) if got else (0, 0)
    wall = (last_ms - first_ms) / 1000
    errors = sum(f[b"status"] != b"ok" for _, f in got) + len(ids) - len(set(ids))
    cpu = cpu_used(cpu0, cpu1, producers=0.0, collector=own)
    return {
        "cpu_s": cpu,
        "sent": total,
        "received": len(set(ids)),
        "errors": errors,
        "exactly_once": len(set(ids)) == total and errors == 0,
        "throughput": (len(got) - 1) / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "e2e_ms": {},
        "queue_ms": pct([float(f[b"queue_ms"]) for _, f in got]),
        "infer_ms": pct([float(f[b"infer_ms"]) for _, f in got]),
        "latency_ms": pct([float(f[b"latency_ms"]) for _, f in got]),
        "mean_batch": float(np.mean([int(f[b"batch_size"]) for _, f in got])) if got else 0.0,
        "backlog": [],
    }


def cpu_used(
    before: dict[str, float | None], after: dict[str, float | None], **own: float
) -> dict[str, float | None]:
    """CPU seconds each role used between two ``Run.cpu_seconds`` readings (None where
    one could not be read), plus the roles measured by themselves."""
    used = {
        role: after[role] - start if start is not None and after.get(role) is not None else None  # type: ignore[operator]
        for role, start in before.items()
    }
    return {**used, **own}


def pct(values: list[float]) -> dict[str, float]:
    """Percentiles, or {} when there is nothing to summarize."""
    return {k: v for k, v in percentiles(values).items() if k != "n"} if values else {}


# -- the floor -------------------------------------------------------------------------------


def floor(url: str, requests: int = 200_000) -> dict[str, Any]:
    """redis-benchmark's XADD rate (50 clients), and XADD+XREAD round trips with redis-py."""
    out: dict[str, Any] = {}
    m = re.match(r"redis://(?:[^@]*@)?([^:/]+):(\d+)", url)
    rb = shutil.which("redis-benchmark")
    if rb and m:
        key = f"bench:floor:{uuid.uuid4().hex[:8]}"
        proc = subprocess.run(
            [
                rb,
                "-h",
                m.group(1),
                "-p",
                m.group(2),
                "-c",
                "50",
                "-n",
                str(requests),
                "-q",
                "XADD",
                key,
                "MAXLEN",
                "~",
                "100000",
                "*",
                "f",
                "v",
            ],
            capture_output=True,
            text=True,
            timeout=MAX_SECONDS,
        )
        rates = re.findall(r"([\d.]+) requests per second", proc.stdout)
        out["redis_benchmark_xadd_per_s"] = float(rates[-1]) if rates else None
        redis.Redis.from_url(url).delete(key)
    else:
        out["redis_benchmark_xadd_per_s"] = None
    client = redis.Redis.from_url(url)
    key = f"bench:floor:{uuid.uuid4().hex[:8]}"
    samples = []
    payload = np.zeros(28, "<f4").tobytes()
    last = "0-0"
    for _ in range(min(3000, requests)):
        t0 = time.perf_counter_ns()
        client.xadd(key, {"state_f32": payload})
        resp = client.xread({key: last}, count=1)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        last = resp[0][1][-1][0]
    client.delete(key)
    client.close()
    out["xadd_xread_round_trip_ms"] = pct(samples[len(samples) // 6 :])  # after a warm-up
    return out


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor(),
    }


def make_model(folder: Path, hidden: tuple[int, ...]) -> Path:
    import torch

    from agent.actor import SACActor
    from agent.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(SACActor(hidden=hidden), folder / "bench.pt")


def run_scenario(url: str, model: Path, sc: Scenario, log_dir: Path, warmup: int) -> dict[str, Any]:
    run = Run(url, model, sc, log_dir)
    try:
        if sc.drain:
            result = drain(run, sc.total)
        else:
            run.start_workers()
            if warmup:
                run.send_and_collect(warmup, None, warmup=True)
            result = run.send_and_collect(sc.total, sc.rate)
    finally:
        run.stop_workers()
        run.cleanup()
    backlog = result.pop("backlog")
    result["backlog_max"] = max((b for _, b in backlog), default=0)
    sent_by = sc.duration if sc.rate else result["wall_s"]
    result["backlog_end_of_send"] = next((b for t, b in reversed(backlog) if t <= sent_by), 0)
    return {"scenario": sc.__dict__ | {"total": sc.total}, **result}


def table(results: list[dict[str, Any]], fl: dict[str, Any]) -> str:
    rb = fl.get("redis_benchmark_xadd_per_s")
    rt = fl["xadd_xread_round_trip_ms"]["p50"]
    lines = [
        f"floor: redis-benchmark XADD {rb:,.0f}/s (50 clients); XADD+XREAD round trip p50 {rt:.3f} ms"
        if rb
        else f"floor: XADD+XREAD round trip p50 {rt:.3f} ms (no redis-benchmark)",
        f"{'scenario':<24} {'states/s':>9} {'×floor':>7} {'e2e p50':>8} {'p95':>7} {'p99':>7} "
        f"{'max':>7} {'×rtt':>6} {'queue p50':>9} {'infer p50':>9} {'lat p50':>8} {'batch':>6} "
        f"{'backlog':>7} {'ok':>3}  cpu % of one core: workers/redis/producers/collector",
    ]
    for r in results:
        e = r["e2e_ms"] or {
            "p50": float("nan"),
            "p95": float("nan"),
            "p99": float("nan"),
            "max": float("nan"),
        }
        ratio = r["throughput"] / rb if rb else float("nan")
        lines.append(
            f"{r['scenario']['name']:<24} {r['throughput']:9,.0f} {ratio:7.2f} {e['p50']:7.2f}ms "
            f"{e['p95']:7.2f} {e['p99']:7.2f} {e['max']:7.1f} {e['p50'] / rt:6.1f} "
            f"{r['queue_ms'].get('p50', 0):8.2f}ms {r['infer_ms'].get('p50', 0):8.3f}ms "
            f"{r['latency_ms'].get('p50', 0):7.3f}ms {r['mean_batch']:6.1f} {r['backlog_end_of_send']:7d} "
            f"{'yes' if r['exactly_once'] else 'NO':>3}  {cpu_shares(r)}"
        )
    return "\n".join(lines)


def cpu_shares(r: dict[str, Any]) -> str:
    """Each role's CPU time over the run's wall time, in % of one core."""
    wall = r["wall_s"]
    return "/".join(
        "?" if r["cpu_s"].get(role) is None or not wall > 0 else f"{100 * r['cpu_s'][role] / wall:.0f}"
        for role in ("workers", "redis", "producers", "collector")
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(
        (r["scenario"]["rate"], r["e2e_ms"]) for r in results if r["scenario"]["rate"] and r["e2e_ms"]
    )
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("p50", "p95", "p99"):
        ax.plot([p[0] for p in pts], [p[1][key] for p in pts], marker="o", label=key)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (states/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("statpair: latency against offered rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="worker processes (default scenarios: 1 and 2)")
    p.add_argument("--backend", choices=["jit", "eager"], default="jit")
    p.add_argument("--rate", type=float, default=None, help="offered states/s (open loop)")
    p.add_argument("--rates", default=None, help="a sweep of offered rates, comma-separated")
    p.add_argument("--count", type=int, default=None, help="states sent as fast as possible")
    p.add_argument(
        "--drain",
        action="store_true",
        help="queue --count states first, then time the workers emptying the queue",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds at a fixed rate (default 10)")
    p.add_argument("--producers", type=int, default=1, help="producer processes (default 1)")
    p.add_argument(
        "--idle-spin-ms",
        type=float,
        default=None,
        help="the workers' IDLE_SPIN_MS (default: 0, and 2 in the default scenarios' spin row)",
    )
    p.add_argument("--warmup", type=int, default=5000, help="states sent before measuring (default 5000)")
    p.add_argument(
        "--hidden",
        default="64,64",
        help="actor hidden sizes of the generated model (default 64,64: what agent.train makes)",
    )
    p.add_argument("--model", type=Path, default=None, help="a checkpoint to serve instead")
    p.add_argument("--no-floor", action="store_true", help="skip measuring the Redis floor")
    p.add_argument(
        "--floor-requests", type=int, default=200_000, help="redis-benchmark requests (default 200000)"
    )
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--plot", type=Path, default=None, help="PNG of latency percentiles against offered rate")


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    workers = args.workers or 1
    common: dict[str, Any] = {"backend": args.backend, "producers": args.producers}
    if args.idle_spin_ms is not None:
        common["idle_spin_ms"] = args.idle_spin_ms
    if args.rates:
        chosen = [
            Scenario(
                f"{float(r):g}/s, {workers} worker(s)",
                workers=workers,
                rate=float(r),
                duration=args.duration,
                **common,
            )
            for r in args.rates.split(",")
        ]
    elif args.rate:
        chosen = [
            Scenario(
                f"{args.rate:g}/s, {workers} worker(s)",
                workers=workers,
                rate=args.rate,
                duration=args.duration,
                **common,
            )
        ]
    elif args.count or args.workers or args.drain:
        chosen = [
            Scenario(
                f"{'drain' if args.drain else 'saturation'}, {workers} worker(s)",
                workers=workers,
                count=args.count or 100_000,
                drain=args.drain,
                **common,
            )
        ]
    else:
        chosen = [Scenario(**{**sc.__dict__, **common}) for sc in DEFAULT_SCENARIOS]
    return [
        sc
        if not sc.idle_spin_ms or "spin" in sc.name
        else Scenario(**{**sc.__dict__, "name": f"{sc.name}, spin"})
        for sc in chosen
    ]


def main(args: argparse.Namespace) -> int:
    try:
        ctx = redis_for(os.environ.get("REDIS_URL"), allow_fake=False)
        target = ctx.__enter__()
    except RuntimeError as exc:
        print(f"skipped: {exc}")
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="statpair-e2e-") as folder:
            model = args.model or make_model(Path(folder), tuple(int(h) for h in args.hidden.split(",")))
            fl = (
                floor(target.url, args.floor_requests)
                if not args.no_floor
                else {"redis_benchmark_xadd_per_s": None, "xadd_xread_round_trip_ms": {"p50": float("nan")}}
            )
            results = []
            for sc in scenarios_from(args):
                results.append(run_scenario(target.url, model, sc, Path(folder), args.warmup))
                print(f"done: {sc.name}", flush=True)
        print(
            f"\nstatpair e2e through Redis ({target.kind}), {args.backend}, model {args.hidden}, "
            f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
        )
        print(table(results, fl))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "machine": machine(),
                        "floor": fl,
                        "results": results,
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    },
                    indent=2,
                )
            )
            print(f"wrote {args.json}")
        if args.plot:
            plot(results, args.plot)
            print(f"plot: {args.plot}")
    finally:
        ctx.__exit__(None, None, None)
    return 0
