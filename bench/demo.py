"""The demo: the whole loop on one machine in about a minute.

Starts an embedded Redis (unless ``REDIS_URL`` is set), trains a small policy
if the model folder has none, starts a worker with TorchScript on, and runs a
demo strategy that streams pair states through ``ActionClient``, printing a
live table, then a summary and a PNG plot. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.env import PairConfig, PairTradingEnv
from agent.evaluate import EVAL_SEED
from bench.embedded import redis_for
from worker.client import ActionClient, ActionError

PAIRS = ["KO/PEP", "XOM/CVX", "V/MA", "GS/MS"]
SIDE = {-1: "short", 0: "flat", 1: "long"}


@dataclass
class Track:
    z: list[float] = field(default_factory=list)
    position: list[float] = field(default_factory=list)
    pnl: list[float] = field(default_factory=list)


def ensure_model(model_dir: Path, episodes: int) -> Path:
    existing = sorted(p for p in model_dir.glob("*.pt") if not p.name.startswith("."))
    if existing:
        newest = max(existing, key=lambda p: p.stat().st_mtime)
        print(f"model: {newest}")
        return newest
    from agent.train import TrainConfig, train

    print(f"no model in {model_dir}/: training a small policy ({episodes} episodes, under a minute)")
    cfg = TrainConfig(
        episodes=episodes, eval_every=5, max_minutes=0.8, out=model_dir / "policy.pt", run_dir=Path("runs")
    )
    result = train(cfg)
    print(
        f"trained {result.episodes} episodes in {result.seconds:.0f} s: validation Sharpe "
        f"{result.best_sharpe:.2f} (z-score rule {result.baseline_sharpe:.2f}); model {result.out}"
    )
    return result.out


def start_worker(redis_url: str, model_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(model_dir),
        "STAT_PAIR_RL_JIT": "1",
        "CONSUMER": f"demo-worker-{os.getpid()}",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("MODEL_PATH", None)
    # Its own session: Ctrl-C reaches the demo only, which then stops the worker in order.
    return subprocess.Popen([sys.executable, "-m", "worker"], env=env, start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


async def wait_ready(client: ActionClient, state: np.ndarray, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.act(state)
            return
        except (ActionError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not serve within {timeout:.0f} s: {exc}") from exc
            await asyncio.sleep(0.2)


async def strategy(redis_url: str, ticks: int, rate: float, pairs: list[str]) -> dict:
    envs = [PairTradingEnv(PairConfig(episode_length=ticks + 1)) for _ in pairs]
    states = np.stack([env.reset(EVAL_SEED + 100 + i) for i, env in enumerate(envs)])
    tracks = {p: Track() for p in pairs}
    rtt, worker_ms, infer_ms = [], [], []
    backend = "?"
    # Ctrl-C sets a flag the tick loop checks (uvicorn's pattern), rather than
    # cancelling whatever await happens to be running.
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    async with ActionClient(redis_url, timeout=10) as client:
        await wait_ready(client, states[0])
        print(
            f"\n{'pair':<8} {'z-score':>8} {'action':>8} {'side':>6} {'queue':>8} {'infer':>8} "
            f"{'total':>8} {'rtt':>8}  backend",
            flush=True,
        )
        started = time.monotonic()
        for tick in range(ticks):
            if interrupted.is_set():
                break
            t0 = time.perf_counter()
            results = await client.act_many(states, pairs)
            elapsed = (time.perf_counter() - t0) * 1e3
            next_states = []
            for i, (pair, res) in enumerate(zip(pairs, results, strict=True)):
                if isinstance(res, ActionError):
                    print(f"{pair:<8} error {res.code}: {res.detail}")
                    action = 0.0
                else:
                    action = float(res.action)
                    backend = res.backend or backend
                    rtt.append(elapsed)
                    worker_ms.append(res.latency_ms)
                    infer_ms.append(res.infer_ms)
                    print(
                        f"{pair:<8} {states[i][0]:8.2f} {action:8.3f} {SIDE[res.discrete]:>6} "
                        f"{res.queue_ms:7.2f}ms {res.infer_ms:6.3f}ms {res.latency_ms:6.3f}ms "
                        f"{elapsed:6.2f}ms  {res.backend}"
                    )
                state, reward, _, info = envs[i].step(action)
                t = tracks[pair]
                t.z.append(float(states[i][0]))
                t.position.append(action)
                t.pnl.append(reward)
                next_states.append(state)
            states = np.stack(next_states)
            # Pace the ticks so a person can watch (this is a demo, not a benchmark).
            await asyncio.sleep(max(0.0, started + (tick + 1) / rate - time.monotonic()))
    loop.remove_signal_handler(signal.SIGINT)
    if interrupted.is_set():
        raise KeyboardInterrupt
    return {"tracks": tracks, "rtt": rtt, "worker_ms": worker_ms, "infer_ms": infer_ms, "backend": backend}


def sharpe(pnl: np.ndarray) -> float:
    return float(pnl.mean() / pnl.std() * math.sqrt(252)) if pnl.std() > 0 else 0.0


def summarize(out: dict, plot: Path) -> None:
    tracks: dict[str, Track] = out["tracks"]
    served = len(out["rtt"])
    print(f"\nserved {served} states ({out['backend']})")
    if served:
        p = np.percentile
        print(
            f"round trip per tick (client XADD → result read): p50 {p(out['rtt'], 50):.2f} ms, "
            f"p99 {p(out['rtt'], 99):.2f} ms"
        )
        print(
            f"worker latency (read → result ready): p50 {p(out['worker_ms'], 50):.3f} ms, "
            f"p99 {p(out['worker_ms'], 99):.3f} ms; inference p50 {p(out['infer_ms'], 50):.3f} ms"
        )
    total = np.sum([np.asarray(t.pnl) for t in tracks.values()], axis=0)
    for pair, t in tracks.items():
        pnl = np.asarray(t.pnl)
        print(f"{pair:<8} PnL {pnl.sum():+.4f}  Sharpe {sharpe(pnl):5.2f}")
    print(f"{'all':<8} PnL {total.sum():+.4f}  Sharpe {sharpe(total):5.2f} (annualised, one step = one day)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for pair, t in tracks.items():
        axes[0].plot(t.z, label=pair, lw=1)
        axes[1].plot(t.position, label=pair, lw=1)
        axes[2].plot(np.cumsum(t.pnl), label=pair, lw=1)
    axes[2].plot(np.cumsum(total), label="all", lw=2, color="black")
    for ax, title in zip(
        axes, ["spread z-score (60 steps)", "position (−1 short … +1 long)", "cumulative PnL"], strict=True
    ):
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=len(tracks))
    axes[2].set_xlabel("step")
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    print(f"plot: {plot.resolve()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench demo", description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=150, help="steps of the demo strategy (default 150)")
    p.add_argument("--rate", type=float, default=20.0, help="ticks per second (default 20)")
    p.add_argument("--pairs", type=int, default=4, help=f"pairs traded, up to {len(PAIRS)}")
    p.add_argument("--train-episodes", type=int, default=20, help="episodes if a model must be trained")
    p.add_argument("--plot", type=Path, default=Path("runs/demo.png"))
    args = p.parse_args(argv)
    # Ctrl-C must work even when started with SIGINT ignored (as background jobs are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model_dir = Path(os.environ.get("MODEL_DIR") or "models")
    worker = None
    try:
        with redis_for(os.environ.get("REDIS_URL")) as target:
            pid = f" (pid {target.pid})" if target.pid else ""
            print(f"redis: {target.kind} at {target.url.split('@')[-1]}{pid}", flush=True)
            ensure_model(model_dir, args.train_episodes)
            worker = start_worker(target.url, model_dir)
            print(f"worker: pid {worker.pid}, STAT_PAIR_RL_JIT=1", flush=True)
            out = asyncio.run(strategy(target.url, args.ticks, args.rate, PAIRS[: max(1, args.pairs)]))
            stop_process(worker)
            summarize(out, args.plot)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the worker and Redis")
        return 130
    finally:
        stop_process(worker)
    return 0
