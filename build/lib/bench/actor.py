"""Eager vs TorchScript latency of ``SACActor.deterministic`` per batch size,
and the streaming feature builder's cost per tick (``FeatureBuilder.update``).

The two backends are measured interleaved (alternating rounds within each
batch size) so that drift on a noisy machine hits both equally.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from agent.actor import SACActor
from agent.compile import compile_actor
from agent.features import STATE_DIM
from bench.argtypes import positive_ints
from bench.features import bench_features
from bench.stats import summarize_us

FEATURE_TARGET_US = 20.0  # issue 13: a streaming update costs at most this, on this machine
FEATURE_GAP_S = 0.001  # the paced run: one tick a millisecond, idle in between
PACED_TICKS = 1000  # at most, so that the paced run stays near a second


def _time_calls(fn: Any, x: torch.Tensor, n: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn(x)
        out.append(clock() - t0)


def run(
    batch_sizes: list[int],
    state_dim: int = STATE_DIM,
    hidden: tuple[int, ...] | None = None,
    warmup: int = 200,
    iters: int = 2000,
    rounds: int = 10,
    threads: int = 1,
    seed: int = 0,
    feature_ticks: int = 0,
) -> dict[str, Any]:
    """Measure every cell and return a JSON-ready dict. ``hidden`` None times the
    actor's default size: what training ships and the worker serves. With
    ``feature_ticks`` > 0 the streaming feature builder is timed too, after the
    actor: over that many ticks back to back ("features"), and over at most
    ``PACED_TICKS`` with an idle millisecond before each ("features_paced");
    both None when skipped."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    actor = SACActor(state_dim=state_dim) if hidden is None else SACActor(state_dim=state_dim, hidden=hidden)
    probe = torch.randn(4, state_dim)
    eager = compile_actor(actor, jit=False)
    jit = compile_actor(actor, jit=True, check_states=probe)
    if not jit.jit_compiled:
        raise RuntimeError(f"scripting failed, nothing to compare: {jit.error}")
    rounds = max(1, min(rounds, iters))
    cells = []
    with torch.inference_mode():
        for bs in batch_sizes:
            x = torch.randn(bs, state_dim)
            for fn in (eager.fn, jit.fn):
                _time_calls(fn, x, warmup, [])
            samples: dict[str, list[int]] = {"eager": [], "jit": []}
            per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
            for r, n in enumerate(per_round):
                # Alternate which backend goes first so neither always follows the other.
                order = (("eager", eager.fn), ("jit", jit.fn))
                for name, fn in order if r % 2 == 0 else order[::-1]:
                    _time_calls(fn, x, n, samples[name])
            e, j = summarize_us(samples["eager"]), summarize_us(samples["jit"])
            cells.append({"batch_size": bs, "eager": e, "jit": j, "speedup_p50": e["p50"] / j["p50"]})
    features = paced = None
    if feature_ticks > 0:
        features = bench_features(ticks=feature_ticks, seed=seed) | {"target_us": FEATURE_TARGET_US}
        paced = bench_features(ticks=min(feature_ticks, PACED_TICKS), seed=seed, gap_s=FEATURE_GAP_S) | {
            "target_us": FEATURE_TARGET_US,
            "gap_s": FEATURE_GAP_S,
        }
    return {
        "benchmark": "actor",
        "state_dim": state_dim,
        "hidden": list(actor.hidden),
        "warmup": warmup,
        "iters": iters,
        "rounds": rounds,
        "threads": threads,
        "torch": torch.__version__,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "unit": "microseconds",
        "cells": cells,
        "features": features,
        "features_paced": paced,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"SAC actor deterministic(): eager vs torch.jit.script  state_dim={result['state_dim']} "
        f"hidden={result['hidden']} warmup={result['warmup']} iters={result['iters']} "
        f"threads={result['threads']} torch={result['torch']}",
    ]
    for c in result["cells"]:
        e, j = c["eager"], c["jit"]
        lines.append(
            f"bs={c['batch_size']:>4}  eager p50={e['p50']:7.1f}µs p95={e['p95']:7.1f} "
            f"p99={e['p99']:7.1f} mean={e['mean']:7.1f}  "
            f"jit p50={j['p50']:7.1f}µs p95={j['p95']:7.1f} p99={j['p99']:7.1f} "
            f"mean={j['mean']:7.1f}  speedup ×{c['speedup_p50']:.2f}"
        )
    for key, how in (("features", "back to back"), ("features_paced", "1 ms idle before each")):
        f = result.get(key)
        if f:
            target = f["target_us"]
            verdict = ", ".join(
                f"{p} {'met' if f[f'{p}_us'] <= target else 'MISSED'}" for p in ("p50", "p99")
            )
            lines.append(
                f"streaming features FeatureBuilder.update, {f['ticks']:.0f} ticks {how}: "
                f"p50={f['p50_us']:.1f}µs p95={f['p95_us']:.1f} p99={f['p99_us']:.1f} "
                f"mean={f['mean_us']:.1f}  target ≤ {target:g} µs per update: {verdict}"
            )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-sizes",
        type=positive_ints,
        default=(1, 8, 32, 128),
        help="comma-separated (default 1,8,32,128)",
    )
    p.add_argument("--state-dim", type=int, default=STATE_DIM)
    p.add_argument(
        "--hidden",
        type=positive_ints,
        default=None,
        help="hidden layer sizes, comma-separated, e.g. 256,256 "
        "(default: the actor's default, what training ships and the worker serves)",
    )
    p.add_argument("--warmup", type=int, default=200, help="untimed calls per backend and cell")
    p.add_argument("--iters", type=int, default=2000, help="timed calls per backend and cell")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds the iters are split in")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument(
        "--feature-ticks",
        type=int,
        default=20_000,
        help="ticks the streaming feature builder is timed over (default 20000; 0 skips it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")


def main(args: argparse.Namespace) -> int:
    result = run(
        batch_sizes=list(args.batch_sizes),
        state_dim=args.state_dim,
        hidden=args.hidden,
        warmup=args.warmup,
        iters=args.iters,
        rounds=args.rounds,
        threads=args.threads,
        seed=args.seed,
        feature_ticks=args.feature_ticks,
    )
    print(format_table(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0
