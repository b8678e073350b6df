"""``python -m bench e2e --cluster N``: a throwaway N-primary Redis Cluster (and a
single Redis beside it), the saturation and drain scenarios with 1..N workers on
the single Redis, on the cluster with one shard and with SHARDS shards, and the
table of throughput and per-state CPU (workers, Redis by node and by command)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.cluster import LocalRedisCluster
from bench.e2e.durable import act_latency
from bench.e2e.measure import run_scenario
from bench.e2e.report import machine
from bench.e2e.result import Result
from bench.e2e.scenarios import Scenario
from bench.redis_process import MissingServer, RedisProcess

PAIRS_PER_SHARD = 32  # states go round this many pairs per shard: every shard its share
SERVE_CHOICES = ("all", "split", "both")


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Redis Cluster (starts its own loopback servers; REDIS_URL is not used)",
    )
    g.add_argument(
        "--cluster",
        type=int,
        default=None,
        metavar="N",
        help="start an N-primary Redis Cluster (N >= 3) and compare it with a single Redis",
    )
    g.add_argument("--cluster-replicas", type=int, default=0, help="replicas per primary (default 0)")
    g.add_argument("--shards", type=int, default=None, help="SHARDS of the sharded rows (default N)")
    g.add_argument(
        "--serve",
        choices=SERVE_CHOICES,
        default="both",
        help="with several workers: each serves all shards (all), its own (split, SERVE_SHARDS), "
        "or a row of each (both, the default)",
    )
    g.add_argument(
        "--act-latency",
        type=int,
        default=0,
        metavar="COUNT",
        help="also time COUNT act() calls, plain and durable=True, through one worker on the cluster "
        "(needs --cluster-replicas 1 or more)",
    )
    g.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole list this many times, pass after pass (the table shows medians; "
        "on a noisy host, 3)",
    )
    g.add_argument(
        "--no-compare-single",
        action="store_true",
        help="only the sharded cluster rows (not the single Redis, not the one-shard cluster)",
    )


def check_cluster_arguments(args: argparse.Namespace) -> str | None:
    """A one-sentence error for flags that do not fit together, else None."""
    n = args.cluster
    if n is None:
        given = [
            flag
            for flag, value, default in (
                ("--cluster-replicas", args.cluster_replicas, 0),
                ("--shards", args.shards, None),
                ("--serve", args.serve, "both"),
                ("--act-latency", args.act_latency, 0),
                ("--repeat", args.repeat, 1),
                ("--no-compare-single", args.no_compare_single, False),
            )
            if value != default
        ]
        return f"{given[0]} goes with --cluster N" if given else None
    if n < 3:
        return f"--cluster {n}: a Redis Cluster needs at least 3 primaries"
    if args.cluster_replicas < 0:
        return f"--cluster-replicas {args.cluster_replicas}: must be 0 or more"
    if args.shards is not None and not 1 <= args.shards <= 1024:
        return f"--shards {args.shards}: must be between 1 and 1024"
    if args.repeat < 1:
        return f"--repeat {args.repeat}: must be 1 or more"
    if args.act_latency < 0 or (args.act_latency and args.cluster_replicas < 1):
        return "--act-latency needs a positive count and --cluster-replicas 1 or more (durable WAITs for one)"
    for flag in ("rate", "rates", "drain"):
        if getattr(args, flag, None):
            return f"--{flag} does not go with --cluster (it runs both saturation and drain)"
    return None


def cluster_scenarios(args: argparse.Namespace) -> list[Scenario]:
    """Saturation and drain for each worker count, the single Redis, the
    one-shard cluster and the sharded cluster side by side (run in that order,
    so each comparison is measured within a minute)."""
    n = args.cluster
    shards = args.shards or n
    counts = list(args.workers) if args.workers else list(range(1, n + 1))
    count = args.count or 100_000
    common: dict[str, Any] = {
        "backend": args.backend,
        "producers": args.producers,
        "count": count,
        "pairs": PAIRS_PER_SHARD * shards,
    }
    if args.idle_spin_ms is not None:
        common["idle_spin_ms"] = args.idle_spin_ms
    out = []
    for w in counts:
        for drain in (False, True):
            kind = "drain" if drain else "saturation"
            rows: list[tuple[str, dict[str, Any]]] = []
            if not args.no_compare_single:
                rows += [("single", {}), ("cluster, 1 shard", {"cluster": True, "shards": 1})]
            serves = ["all", "split"] if args.serve == "both" else [args.serve]
            for serve in serves if w > 1 and shards > 1 else ["all"]:
                label = f"cluster, {shards} shards" + (f", {serve}" if w > 1 and shards > 1 else "")
                rows.append((label, {"cluster": True, "shards": shards, "split": serve == "split"}))
            for label, extra in rows:
                out.append(Scenario(f"{kind}, {w}w, {label}", workers=w, drain=drain, **common, **extra))
    return out


def run_cluster(args: argparse.Namespace, model: Path, described: str, folder: Path) -> int:
    """Start the servers, run every scenario, print the tables; servers stopped by PID."""
    from bench.e2e.cluster_report import tables

    scenarios = cluster_scenarios(args)
    with contextlib.ExitStack() as stack:
        try:
            single = None
            if any(not sc.cluster for sc in scenarios):
                single = stack.enter_context(RedisProcess(folder / "single"))
            cluster = stack.enter_context(
                LocalRedisCluster(folder / "cluster", args.cluster, args.cluster_replicas)
            )
        except MissingServer as exc:
            print(f"skipped: {exc}")
            return 0
        layout = {
            "primaries": args.cluster,
            "replicas_per_primary": args.cluster_replicas,
            "shards": args.shards or args.cluster,
            "started_in_s": round(cluster.started_in, 2),
        }
        results: list[Result] = []
        for rep in range(args.repeat):
            for sc in scenarios:
                url = cluster.url if sc.cluster else single.url if single else ""
                results.append(run_scenario(url, model, sc, folder, args.warmup))
                print(f"done: {sc.name}" + (f" (pass {rep + 1})" if args.repeat > 1 else ""), flush=True)
        acts = None
        if args.act_latency:
            shards = args.shards or args.cluster
            acts = act_latency(cluster.url, model, shards, args.act_latency, args.backend, folder)
    head = (
        f"statpair e2e: a {args.cluster}-primary Redis Cluster ({args.cluster_replicas} replica(s) each) "
        f"and a single Redis, {args.backend}, model {described}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(f"\n{head}")
    print(tables(results))
    if acts is not None:
        print(f"\nact() round trip through one worker, {args.act_latency} calls each, alternating (ms):")
        for name in ("plain", "durable"):
            a = acts[name]
            print(
                f"  {name:<8} p50 {a['p50']:.3f}  p95 {a['p95']:.3f}  p99 {a['p99']:.3f}  max {a['max']:.2f}"
            )
        print(f"  durable: states sent again {acts['durable_resent']}")
        b = acts["plain_block"]
        commands = ", ".join(f"{k.upper()} {v['us']:.2f}" for k, v in b.get("commands", {}).items())
        worker, redis_us, replicas = (
            b.get(k) or float("nan") for k in ("worker_cpu_us", "redis_cpu_us", "replica_cpu_us")
        )
        print(
            f"  {b['calls']} plain calls in a block, per call: worker CPU {worker:.1f} µs, "
            f"Redis CPU {redis_us:.1f} µs (of which replicas {replicas:.1f}); commands µs: {commands}"
        )
    if args.json:
        doc = {
            "machine": machine(),
            "cluster": layout,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "results": [r.to_json() for r in results],
            "act_latency_ms": acts,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    return 0
