"""What a run measures: saturation, drain, fixed-rate and idle-spin scenarios,
the default set, and the scenarios the command-line flags ask for."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from typing import Any

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
    pairs: int = 0  # distinct pairs the states go round (0: states carry no pair)
    cluster: bool = False  # on the Redis Cluster (REDIS_CLUSTER=1), else on the single Redis
    shards: int = 1  # SHARDS, with ``cluster``
    split: bool = False  # with ``cluster``: each worker serves its own shards (SERVE_SHARDS), not all
    # What the workers serve: "single" (one model for every state), "pairs" (one model per
    # pair of ``pairs``, no default) or "shadow" (one model and a challenger scoring it).
    models: str = "single"

    @property
    def total(self) -> int:
        return int(self.rate * self.duration) if self.rate else self.count

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"total": self.total}


DEFAULT_SCENARIOS = [
    Scenario("saturation, 1 worker", workers=1, count=100_000),
    Scenario("saturation, 2 workers", workers=2, count=100_000),
    Scenario("drain, 1 worker", workers=1, count=100_000, drain=True),
    Scenario("drain, 2 workers", workers=2, count=100_000, drain=True),
    Scenario("1000/s, 1 worker", rate=1000, duration=10),
    Scenario("1000/s, 1 worker, spin", rate=1000, duration=10, idle_spin_ms=2.0),
    Scenario("1000/s, 1 worker, shadow", rate=1000, duration=10, models="shadow"),
    Scenario("10000/s, 1 worker", rate=10_000, duration=10),
]


def pair_scenarios(pairs: int, count: int = 100_000) -> list[Scenario]:
    """``--pairs N``: saturation and drain with one model, then with N pair models,
    the states spread evenly over the pairs, one after the other in one run."""
    out = []
    for drain in (False, True):
        kind = "drain" if drain else "saturation"
        out.append(Scenario(f"{kind}, 1 worker, 1 model", count=count, drain=drain, pairs=pairs))
        out.append(
            Scenario(
                f"{kind}, 1 worker, {pairs} pair models",
                count=count,
                drain=drain,
                pairs=pairs,
                models="pairs",
            )
        )
    return out


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios the flags ask for: a rate sweep, one rate, one saturation or
    drain run, or (no scenario flag) the default set."""
    workers = args.workers[0] if args.workers else 1
    common: dict[str, Any] = {"backend": args.backend, "producers": args.producers}
    if args.idle_spin_ms is not None:
        common["idle_spin_ms"] = args.idle_spin_ms
    rates = args.rates or ([args.rate] if args.rate else [])
    if getattr(args, "pairs", None):
        chosen = [replace(sc, **common) for sc in pair_scenarios(args.pairs, args.count or 100_000)]
    elif rates:
        chosen = [
            Scenario(
                f"{rate:g}/s, {workers} worker(s)",
                workers=workers,
                rate=rate,
                duration=args.duration,
                **common,
            )
            for rate in rates
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
        chosen = [replace(sc, **common) for sc in DEFAULT_SCENARIOS]
    # A scenario whose workers spin says so in its name, wherever the spin came from.
    return [
        sc if not sc.idle_spin_ms or "spin" in sc.name else replace(sc, name=f"{sc.name}, spin")
        for sc in chosen
    ]
