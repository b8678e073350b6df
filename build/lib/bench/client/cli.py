"""``python -m bench client``: its flags, the Redis, model and worker it runs
against (as ``bench e2e`` starts them), the table and the JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.argtypes import positive_ints
from bench.client.measure import Plan, measure
from bench.e2e.cli import make_model
from bench.e2e.report import machine
from bench.e2e.scenarios import Scenario
from bench.e2e.workers import Keys, Workers
from bench.embedded import redis_for


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=2000, help="timed calls per mode (default 2000)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds the calls are split in, each running every mode in a shuffled order "
        "(default: as many as calls, so the modes alternate call by call)",
    )
    p.add_argument("--warmup", type=int, default=200, help="untimed calls per mode first (default 200)")
    p.add_argument(
        "--many",
        type=positive_ints,
        default=(4, 16, 64),
        help="act_many sizes, comma-separated (default 4,16,64)",
    )
    p.add_argument("--backend", choices=["jit", "eager"], default="jit")
    p.add_argument(
        "--hidden",
        type=positive_ints,
        default=None,
        help="actor hidden sizes of the generated model (default: the actor's default)",
    )
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop the rounds after this long")
    p.add_argument("--json", type=Path, default=None, help="write every figure here")


def main(args: argparse.Namespace) -> int:
    if (
        args.count < 1
        or (args.rounds is not None and args.rounds < 1)
        or args.warmup < 0
        or not args.max_seconds > 0
    ):
        print(
            "python -m bench client: error: --count and --rounds must be at least 1, --warmup at least 0 "
            "and --max-seconds positive",
            file=sys.stderr,
        )
        return 2
    plan = Plan(args.count, args.rounds, args.warmup, tuple(args.many), args.max_seconds)
    with contextlib.ExitStack() as stack:
        try:
            target = stack.enter_context(redis_for(os.environ.get("REDIS_URL"), allow_fake=False))
        except RuntimeError as exc:
            print(f"skipped: {exc}")
            return 0
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statpair-client-")))
        model, hidden = make_model(folder, args.hidden)
        keys = Keys.new()
        sync = redis.Redis.from_url(target.url)
        stack.callback(sync.close)
        stack.callback(keys.delete_all, sync)  # after the worker stopped writing
        scenario = Scenario("client", workers=1, backend=args.backend, count=args.count)
        workers = stack.enter_context(Workers(target.url, model, keys, scenario, folder))
        workers.start(sync)
        result = asyncio.run(measure(target.url, keys, plan))
        doc = {
            "benchmark": "client",
            "redis": target.kind,
            "backend": args.backend,
            "hidden": hidden,
            "plan": {
                "count": plan.count,
                "rounds": len(plan.per_round()),
                "warmup": plan.warmup,
                "many": list(plan.many),
            },
            "machine": machine(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **result,
        }
    print(table(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    return 0


LABELS = {"raw": "raw redis-py", "act": "act", "price": "PriceClient.tick"}


def table(doc: dict[str, Any]) -> str:
    plan = doc["plan"]
    lines = [
        f"statpair client round trip through Redis ({doc['redis']}), 1 worker ({doc['backend']}), "
        f"model {doc['hidden']}, {plan['count']} calls per mode in {plan['rounds']} interleaved rounds, "
        f"{doc['machine']['cores']} cores, {doc['date'][:10]}",
        f"{'call':<18} {'p50 ms':>7} {'p95':>7} {'p99':>7} {'mean':>7} {'µs/state':>8} "
        f"{'client CPU µs':>13} {'worker p50 ms':>13}  batches",
    ]
    for name, m in doc["modes"].items():
        rt, n = m["round_trip_ms"], m["states_per_call"]
        lines.append(
            f"{LABELS.get(name, name):<18} {rt['p50']:7.3f} {rt['p95']:7.3f} {rt['p99']:7.3f} "
            f"{rt['mean']:7.3f} {rt['p50'] * 1e3 / n:8.1f} {m['client_cpu_us_per_call']:13.1f} "
            f"{m['worker_latency_ms']['p50']:13.3f}  {m['one_read_calls']}/{m['calls']} in one read of {n}"
        )
    r = doc["ratios"]
    lines.append(_verdict("act p50 / raw p50", r["act_over_raw_p50"], "×"))
    for n in plan["many"]:
        lines.append(
            _verdict(f"act_many({n}) p50 / act p50", r[f"act_many({n})_over_act_p50"], "×")
            + f"  raw_many({n}) / act {r[f'raw_many({n})_over_act_p50']:.2f}×,"
            f" act_many({n}) / raw_many({n}) {r[f'act_many({n})_over_raw_many({n})_p50']:.2f}×"
        )
    lines.append(_verdict("PriceClient.tick p50 − act p50", r["price_minus_act_p50_us"], " µs"))
    lines.append(
        f"client CPU per call: act − raw {r['act_minus_raw_cpu_us']:+.1f} µs, "
        f"PriceClient.tick − act {r['price_minus_act_cpu_us']:+.1f} µs"
    )
    if doc["cut_short"]:
        lines.append("cut short by --max-seconds: fewer calls than asked (see the calls in the JSON)")
    return "\n".join(lines)


def _verdict(label: str, check: dict[str, Any], unit: str) -> str:
    value = f"{check['value']:.2f}{unit}" if unit == "×" else f"{check['value']:+.0f}{unit}"
    target = f"{check['target']:g}{unit}"
    return f"{label:<32} {value:>9}  (target ≤ {target}: {'met' if check['met'] else 'MISSED'})"
