"""``python -m bench replay``: its flags, the offline reference walk forward, the Redis and the
worker it streams through (as ``bench e2e`` starts them), the verdict and the exit code:
0 serving equals offline, 1 it does not (or the live side failed), 2 bad input."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import redis

from agent.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from agent.contract import ContractError, CsvData
from agent.data import PriceDataError
from agent.heldout import DataError, HeldOut, held_out
from bench.e2e.scenarios import Scenario
from bench.e2e.workers import Keys, Workers
from bench.embedded import redis_for
from bench.replay.compare import Challenge, challenge, checks, reference, replayed
from bench.replay.live import Live, stream
from bench.replay.report import Run, document, text

PROG = "python -m bench replay"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "prices", type=Path, metavar="PRICES.csv", help="the price file whose held-out rows are replayed"
    )
    p.add_argument("--model", type=Path, required=True, help="the checkpoint served and evaluated")
    p.add_argument(
        "--columns", default=None, metavar="A,B", help="its two price columns (default: the contract's)"
    )
    p.add_argument(
        "--allow-other-data",
        action="store_true",
        help="replay a file other than the one the model was trained on (its sha256 differs)",
    )
    p.add_argument(
        "--train-fraction",
        type=float,
        default=None,
        metavar="F",
        help="a synthetic model on a price file: replay the rows after this share of them (default 0.7)",
    )
    p.add_argument("--backend", choices=["jit", "eager"], default="jit", help="the worker's (default jit)")
    p.add_argument(
        "--challenger",
        type=Path,
        default=None,
        metavar="MODEL",
        help="a second model, walked forward offline on the same rows beside the champion",
    )
    p.add_argument(
        "--serve",
        type=Path,
        default=None,
        metavar="MODEL",
        help="have the worker serve this checkpoint instead of --model: a deliberately wrong set-up, "
        "to see the check fail",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for one answer (default 5)")
    p.add_argument(
        "--max-seconds", type=float, default=600.0, help="stop the live replay after this long (default 600)"
    )
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write every figure here")


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _load(path: Path, flag: str) -> Checkpoint:
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file")
    return load_checkpoint(path)


def _held(args: argparse.Namespace, ck: Checkpoint) -> HeldOut:
    if isinstance(ck.contract.data, CsvData) and args.train_fraction is not None:
        d = ck.contract.data
        raise DataError(
            f"--train-fraction: {args.model}'s contract fixes its training window "
            f"(rows {d.train_rows[0]}–{d.train_rows[1] - 1})"
        )
    return held_out(
        args.model, ck.contract, args.prices, args.columns, args.allow_other_data, args.train_fraction
    )


def main(args: argparse.Namespace) -> int:
    if not (args.timeout > 0 and args.max_seconds > 0):
        return _error("--timeout and --max-seconds must be positive")
    if not args.prices.is_file():
        return _error(f"{args.prices}: no such file")
    try:
        ck = _load(args.model, "--model")
        served = args.model if args.serve is None else args.serve
        if args.serve is not None:
            _load(args.serve, "--serve")  # a clear error here, not a worker that never starts
        held = _held(args, ck)
        cost = ck.contract.cost
        # The model as the worker serves it (TorchScript with jit) and as the strategy
        # reads its actions: with the eager actor, ulp differences grew along the walk.
        ref = reference(args.model, held.data, cost, args.backend)
        offline = ref.trace
        rival: Challenge | None = None
        if args.challenger is not None:
            other = _load(args.challenger, "--challenger")
            rival = challenge(args.challenger, other, held.table, held.data, offline, cost)
    except (CheckpointError, ContractError, PriceDataError, DataError) as exc:
        return _error(str(exc))
    start, stop = held.rows
    pair = ck.contract.pair or "/".join(held.table.columns)
    with contextlib.ExitStack() as stack:
        try:
            target = stack.enter_context(redis_for(os.environ.get("REDIS_URL"), allow_fake=False))
        except RuntimeError as exc:
            return _error(f"{exc}: the replay needs a real Redis (set REDIS_URL or install redis-server)")
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statpair-replay-")))
        keys = Keys.new()
        sync = redis.Redis.from_url(target.url)
        stack.callback(sync.close)
        stack.callback(keys.delete_all, sync)  # after the worker stopped writing
        scenario = Scenario("replay", workers=1, backend=args.backend, count=stop - start)
        workers = stack.enter_context(Workers(target.url, served, keys, scenario, folder))
        try:
            workers.start(sync)
            live = asyncio.run(
                stream(
                    target.url,
                    keys,
                    pair,
                    held.table.a,
                    held.table.b,
                    (start, stop),
                    timeout=args.timeout,
                    max_seconds=args.max_seconds,
                )
            )
        except (RuntimeError, TimeoutError) as exc:  # the worker did not start, or no contract
            live = Live(error=str(exc))
        if live.error is not None and workers.procs and workers.procs[0].poll() is not None:
            live.error += f" (the worker exited with {workers.procs[0].returncode}: {_tail(workers.log(0))})"
    rep = replayed(live, len(offline), cost)
    found, diffs = checks(offline, held.data.spread[start:stop], live, rep, ck, cost)
    run = Run(
        args.model,
        ck,
        served,
        held,
        offline,
        live,
        rep,
        found,
        diffs,
        target.kind,
        args.backend,
        rival,
        reference_backend=ref.backend,
    )
    print("\n".join(text(run)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document(run), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if run.ok else 1


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
