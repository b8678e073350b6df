"""``python -m bench e2e``: its flags, the model the workers serve, and the run:
the floor, every scenario, then the table, the JSON and the plot."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.argtypes import positive_float, positive_floats, positive_int, positive_ints
from bench.e2e.cluster_cli import add_cluster_arguments, check_cluster_arguments, run_cluster
from bench.e2e.floor import NO_FLOOR, floor
from bench.e2e.lanes import pair_labels
from bench.e2e.measure import run_scenario
from bench.e2e.report import document, plot, table
from bench.e2e.scenarios import Scenario, scenarios_from
from bench.embedded import redis_for


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=positive_ints,
        default=None,
        help="worker processes (default scenarios: 1 and 2); with --cluster, counts such as 1,3 "
        "(default 1..N)",
    )
    p.add_argument("--backend", choices=["jit", "eager"], default="jit")
    p.add_argument("--rate", type=float, default=None, help="offered states/s (open loop)")
    p.add_argument(
        "--rates", type=positive_floats, default=None, help="a sweep of offered rates, comma-separated"
    )
    p.add_argument("--count", type=positive_int, default=None, help="states sent as fast as possible")
    p.add_argument(
        "--drain",
        action="store_true",
        help="queue --count states first, then time the workers emptying the queue",
    )
    p.add_argument(
        "--duration", type=positive_float, default=10.0, help="seconds at a fixed rate (default 10)"
    )
    p.add_argument("--producers", type=positive_int, default=1, help="producer processes (default 1)")
    p.add_argument(
        "--idle-spin-ms",
        type=float,
        default=None,
        help="the workers' IDLE_SPIN_MS (default: 0, and 2 in the default scenarios' spin row)",
    )
    p.add_argument("--warmup", type=int, default=5000, help="states sent before measuring (default 5000)")
    p.add_argument(
        "--hidden",
        type=positive_ints,
        default=None,
        help="actor hidden sizes of the generated model, comma-separated "
        "(default: the actor's default, what agent.train makes)",
    )
    p.add_argument("--model", type=Path, default=None, help="a checkpoint to serve instead")
    p.add_argument("--no-floor", action="store_true", help="skip measuring the Redis floor")
    p.add_argument(
        "--floor-requests", type=int, default=200_000, help="redis-benchmark requests (default 200000)"
    )
    p.add_argument(
        "--pairs",
        type=positive_int,
        default=None,
        help="saturation and drain with one model, then with this many pair models (one per pair, "
        "the states spread evenly over them), in one run",
    )
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--plot", type=Path, default=None, help="PNG of latency percentiles against offered rate")
    add_cluster_arguments(p)


def make_model(folder: Path, hidden: tuple[int, ...] | None) -> tuple[Path, str]:
    """A seeded actor's checkpoint in ``folder`` (``hidden`` None: the actor's
    default size), and its hidden sizes as ``64,64``."""
    import torch

    from agent.actor import SACActor
    from agent.checkpoint import save_checkpoint
    from agent.env import PairConfig

    torch.manual_seed(0)
    actor = SACActor() if hidden is None else SACActor(hidden=hidden)
    return save_checkpoint(actor, folder / "bench.pt", contract=PairConfig().contract()), ",".join(
        map(str, actor.hidden)
    )


def model_folder(folder: Path, model: Path, sc: Scenario) -> Path:
    """What ``sc``'s workers serve: ``model`` itself, or a model folder: one model per
    pair of the scenario's pair labels (each with a contract naming its pair), or the
    model and a challenger (another seed, the same contract, so it can be scored)."""
    if sc.models == "single":
        return model
    import torch

    from agent.actor import SACActor
    from agent.checkpoint import load_checkpoint, save_checkpoint
    from agent.contract import PairContract

    base = load_checkpoint(model)
    target = folder / f"models-{sc.models}-{sc.pairs}"
    if target.exists():
        return target
    hidden = base.actor.hidden
    if sc.models == "shadow":
        save_checkpoint(base.actor, target / "policy.pt", contract=base.contract)
        torch.manual_seed(1)
        save_checkpoint(
            SACActor(hidden=hidden), target / "challengers" / "next" / "policy.pt", contract=base.contract
        )
        return target
    for i, pair in enumerate(pair_labels(1, sc.pairs)):
        legs = pair.split("/")
        data = json.loads(base.contract.to_json())
        data["instruments"] = {"leg_a": legs[0], "leg_b": legs[1]}
        torch.manual_seed(100 + i)
        save_checkpoint(
            SACActor(hidden=hidden),
            target / "pairs" / f"p{i}" / "policy.pt",
            contract=PairContract.from_dict(data),
        )
    return target


def main(args: argparse.Namespace) -> int:
    if args.model is not None and not args.model.is_file():
        print(f"python -m bench e2e: error: --model {args.model}: no such file", file=sys.stderr)
        return 2
    problem = check_cluster_arguments(args)
    if problem is None and args.cluster is None and args.workers and len(args.workers) > 1:
        problem = f"--workers {','.join(map(str, args.workers))}: one count without --cluster"
    if problem is None and args.pairs is not None:
        others = [
            f
            for f, v in (
                ("--cluster", args.cluster),
                ("--rate", args.rate),
                ("--rates", args.rates),
                ("--drain", args.drain or None),
                ("--workers", args.workers),
            )
            if v is not None
        ]
        if others:
            problem = "--pairs runs its own scenarios (one worker, saturation and drain): " + (
                f"not with {', '.join(others)}"
            )
    if problem:
        print(f"python -m bench e2e: error: {problem}", file=sys.stderr)
        return 2
    if args.cluster is not None:
        with tempfile.TemporaryDirectory(prefix="statpair-e2e-") as tmp:
            folder = Path(tmp)
            if args.model is not None:
                model, described = args.model, str(args.model)
            else:
                model, described = make_model(folder, args.hidden)
            return run_cluster(args, model, described, folder)
    with contextlib.ExitStack() as stack:
        try:
            target = stack.enter_context(redis_for(os.environ.get("REDIS_URL"), allow_fake=False))
        except RuntimeError as exc:
            print(f"skipped: {exc}")
            return 0
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statpair-e2e-")))
        if args.model is not None:
            model, described = args.model, str(args.model)
        else:
            model, described = make_model(folder, args.hidden)
        fl = NO_FLOOR if args.no_floor else floor(target.url, args.floor_requests)
        results = []
        for sc in scenarios_from(args):
            results.append(run_scenario(target.url, model_folder(folder, model, sc), sc, folder, args.warmup))
            print(f"done: {sc.name}", flush=True)
        print(
            f"\nstatpair e2e through Redis ({target.kind}), {args.backend}, model {described}, "
            f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
        )
        print(table(results, fl))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(document(results, fl), indent=2))
            print(f"wrote {args.json}")
        if args.plot:
            plot(results, args.plot)
            print(f"plot: {args.plot}")
    return 0
