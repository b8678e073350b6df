"""The demo: the whole loop on one machine in about a minute, on synthetic prices.

Starts an embedded Redis (unless ``REDIS_URL`` is set), trains a small policy
if the model folder has none, starts a worker with TorchScript on, and runs a
demo strategy on the live path: two synthetic price feeds per pair go in
through ``PriceClient`` (streaming features built from the served model's
contract, over ``ActionClient``) and actions come out. It prints a progress
line a second, then a summary and a PNG plot. Ctrl-C stops everything it started.
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
from pathlib import Path

import numpy as np

from agent.contract import PairContract, SyntheticData
from agent.env import PairConfig, ou_spread
from agent.evaluate import EVAL_SEED
from agent.features import STATE_DIM
from bench.demo_report import Track, summarize
from bench.embedded import redis_for
from worker.client import ActionClient, ActionError
from worker.prices import ContractUnavailable, PriceClient

# Synthetic pairs, named so that no one takes them for a market's tickers.
PAIRS = ["SYN-A/SYN-B", "SYN-C/SYN-D", "SYN-E/SYN-F", "SYN-G/SYN-H"]
READY_SECONDS = 60.0  # loading and scripting the model, on a busy machine


def ensure_model(model_dir: Path, episodes: int) -> Path:
    existing = sorted(p for p in model_dir.glob("*.pt") if not p.name.startswith("."))
    if existing:
        newest = max(existing, key=lambda p: p.stat().st_mtime)
        print(f"model: {newest}")
        return newest
    from agent.train import TrainConfig, train

    print(f"no model in {model_dir}/: training a small policy on the synthetic pair ({episodes} episodes)")
    cfg = TrainConfig(
        episodes=episodes, eval_every=5, max_minutes=0.8, out=model_dir / "policy.pt", run_dir=Path("runs")
    )
    result = train(cfg)
    print(
        f"trained {result.episodes} episodes in {result.seconds:.0f} s: validation Sharpe "
        f"{result.best_sharpe:.2f} (z-score rule {result.baseline_sharpe:.2f}); {result.publish_note}"
    )
    for warning in result.warnings:
        print(f"warning: {warning}")
    if not result.out.is_file():
        raise SystemExit(f"python -m bench demo: no model to serve: {result.publish_note}")
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


def synthetic_feed(contract: PairContract, seed: int, n: int) -> tuple[list[float], list[float]]:
    """``n`` ticks of two synthetic prices whose spread, built as ``contract`` builds
    it, is the generator's mean-reverting path (its parameters: the contract's when
    the model was trained on the generator, else the defaults)."""
    data = contract.data
    cfg = PairConfig()
    if isinstance(data, SyntheticData):
        cfg = PairConfig(
            half_life=data.half_life,
            sigma=data.sigma,
            regime_prob=data.regime_prob,
            regime_mean_jump=data.regime_mean_jump,
            market_sigma=data.market_sigma,
        )
    rng = np.random.default_rng(seed)
    spread = ou_spread(cfg, rng, n)
    log_b = math.log(100.0) + np.cumsum(rng.normal(0.0, cfg.market_sigma, n))
    log_a = contract.spread.hedge_ratio * log_b + contract.spread.intercept + spread
    return np.exp(log_a).tolist(), np.exp(log_b).tolist()


async def wait_ready(
    client: ActionClient, prices: PriceClient, pair: str, stop: asyncio.Event
) -> PairContract:
    """Until the worker answers a state and the contract published for ``pair`` is the
    one that answered (not one a previous worker left): that contract."""
    deadline = time.monotonic() + READY_SECONDS
    state = np.zeros(STATE_DIM, dtype=np.float32)
    why = "no answer yet"
    while not stop.is_set():
        try:
            answered = (await client.act(state)).contract
            contract = await prices.fetch_contract(pair)
            if answered is None or contract.id == answered:
                return contract
            why = f"the published contract {contract.id} is not the served {answered}"
        except (ActionError, TimeoutError, ContractUnavailable) as exc:
            why = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not serve within {READY_SECONDS:.0f} s: {why}")
        await asyncio.sleep(0.2)
    raise KeyboardInterrupt


async def strategy(redis_url: str, ticks: int, rate: float, pairs: list[str]) -> dict[str, Track]:
    """The demo strategy: per pair, a synthetic feed warmed into ``PriceClient``, then
    one tick of each pair per step, holding the position the model's action sets."""
    # Ctrl-C sets a flag the tick loop checks (uvicorn's pattern), rather than
    # cancelling whatever await happens to be running.
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    tracks = {p: Track() for p in pairs}
    try:
        async with ActionClient(redis_url, timeout=10) as client:
            prices = PriceClient(client)
            contract = await wait_ready(client, prices, pairs[0], interrupted)
            feeds = {}
            for i, pair in enumerate(pairs):
                history = prices.needed(pair) - 1  # the next tick is the first to act
                a, b = synthetic_feed(contract, EVAL_SEED + 100 + i, history + ticks + 1)
                await prices.warm(pair, a[:history], b[:history])
                feeds[pair] = (a[history:], b[history:])
            print(
                f"contract {contract.id} ({_described(contract)}); {len(pairs)} synthetic pairs "
                f"(generated prices, not market data), {ticks} ticks at {rate:g}/s, "
                f"each warmed on {history} ticks of history",
                flush=True,
            )
            started = time.monotonic()
            every = max(1, round(rate))
            for t in range(ticks):
                if interrupted.is_set():
                    break
                for pair in pairs:
                    await _tick(prices, pair, feeds[pair], t, tracks[pair])
                if t == 0 or (t + 1) % every == 0 or t + 1 == ticks:
                    print(_progress(t + 1, ticks, tracks), flush=True)
                # Pace the ticks so a person can watch (this is a demo, not a benchmark).
                await asyncio.sleep(max(0.0, started + (t + 1) / rate - time.monotonic()))
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if interrupted.is_set():
        raise KeyboardInterrupt
    return tracks


async def _tick(
    prices: PriceClient, pair: str, feed: tuple[list[float], list[float]], t: int, track: Track
) -> None:
    """One tick of ``pair``: its action, and the PnL of holding it to the next tick
    (as the training environment scores it: position × spread change − cost of trading)."""
    a, b = feed
    held = prices.position(pair)
    t0 = time.perf_counter()
    try:
        result = await prices.tick(pair, a[t], b[t])
    except (ActionError, TimeoutError) as exc:
        track.errors += 1
        print(f"{pair}: tick {t + 1}: {exc}", flush=True)
        result = None
    else:
        track.rtt_ms.append((time.perf_counter() - t0) * 1e3)
    if result is not None:
        track.worker_ms.append(math.nan if result.latency_ms is None else result.latency_ms)
        track.infer_ms.append(math.nan if result.infer_ms is None else result.infer_ms)
        track.backend = result.backend or track.backend
    contract = prices.contract(pair)
    assert contract is not None  # the pair has ticked
    position = prices.position(pair)
    now, nxt = contract.spread.value(a[t], b[t]), contract.spread.value(a[t + 1], b[t + 1])
    track.spread.append(now)
    track.position.append(position)
    track.pnl.append(position * (nxt - now) - contract.cost * abs(position - held))


def _described(contract: PairContract) -> str:
    data = contract.data
    trained = "the synthetic generator" if isinstance(data, SyntheticData) else f"{data.file}"
    return f"trained on {trained}, hedge ratio {contract.spread.hedge_ratio:.3f}, cost {contract.cost:g}"


def _progress(done: int, ticks: int, tracks: dict[str, Track]) -> str:
    positions = " ".join(f"{t.position[-1]:+.2f}" if t.position else "  -  " for t in tracks.values())
    total = sum(sum(t.pnl) for t in tracks.values())
    rtt = [x for t in tracks.values() for x in t.rtt_ms]
    p50 = f"{np.percentile(rtt, 50):.2f} ms" if rtt else "-"
    return f"tick {done:>5}/{ticks}  positions {positions}  PnL {total:+.4f}  round trip p50 {p50}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench demo", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--ticks", type=int, default=150, help="steps of the demo strategy (default 150)")
    p.add_argument("--rate", type=float, default=20.0, help="ticks per second (default 20)")
    p.add_argument("--pairs", type=int, default=4, help=f"synthetic pairs traded, up to {len(PAIRS)}")
    p.add_argument("--train-episodes", type=int, default=20, help="episodes if a model must be trained")
    p.add_argument("--plot", type=Path, default=Path("runs/demo.png"))
    args = p.parse_args(argv)
    if args.ticks < 1 or not args.rate > 0:
        p.error("--ticks must be at least 1 and --rate positive")
    # Ctrl-C must work even when started with SIGINT ignored (as background jobs are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model_dir = Path(os.environ.get("MODEL_DIR") or "models")
    pairs = PAIRS[: max(1, min(args.pairs, len(PAIRS)))]
    worker = None
    try:
        with redis_for(os.environ.get("REDIS_URL")) as target:
            pid = f" (pid {target.pid})" if target.pid else ""
            print(f"redis: {target.kind} at {target.url.split('@')[-1]}{pid}", flush=True)
            ensure_model(model_dir, args.train_episodes)
            worker = start_worker(target.url, model_dir)
            print(f"worker: pid {worker.pid}, STAT_PAIR_RL_JIT=1", flush=True)
            tracks = asyncio.run(strategy(target.url, args.ticks, args.rate, pairs))
            stop_process(worker)
            summarize(tracks, args.rate, args.plot)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the worker and Redis")
        return 130
    finally:
        stop_process(worker)
    return 0
