"""``python -m tracking.registry``: list a registered model's versions, promote a
version to an alias (guarded by its held-out score against the z-score rule's),
roll an alias back. The server is ``MLFLOW_TRACKING_URI``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tracking.mlflow_tracker import mask_url
from tracking.registry.client import Registry, guard
from tracking.registry.refs import (
    TAG_CONTRACT,
    TAG_VERDICT,
    TEST_SHARPE,
    TEST_ZSCORE,
    VAL_SHARPE,
    RegistryError,
    VersionInfo,
    check_alias,
    check_name,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tracking.registry",
        description="Release statpair models through MLflow's model registry (server: MLFLOW_TRACKING_URI).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    lst = sub.add_parser("list", help="versions, aliases, scores, sha256 and run of a registered model")
    lst.add_argument("name", type=_name, help="the registered model, e.g. statpair-policy")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pro = sub.add_parser("promote", help="point an alias at a version (workers polling it swap to it)")
    pro.add_argument("name", type=_name, help="the registered model, e.g. statpair-policy")
    pro.add_argument("version", type=int, help="the version to point the alias at")
    pro.add_argument("--alias", type=_alias, default="champion", help="default: champion")
    pro.add_argument(
        "--force",
        action="store_true",
        help="promote even when its held-out Sharpe is below the z-score rule's (or unknown)",
    )
    rb = sub.add_parser("rollback", help="point an alias back at the version it pointed to before")
    rb.add_argument("name", type=_name, help="the registered model, e.g. statpair-policy")
    rb.add_argument("--alias", type=_alias, default="champion", help="default: champion")
    return p


def _name(text: str) -> str:
    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _alias(text: str) -> str:
    try:
        return check_alias(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(versions: list[VersionInfo]) -> str:
    rows = [
        ("version", "aliases", "status", "held-out", "z-score", "val", "contract", "sha256", "run", "created")
    ]
    for v in versions:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.created_ms / 1000)) if v.created_ms else "-"
        rows.append(
            (
                str(v.version),
                ",".join(v.aliases) or "-",
                v.status,
                _num(v.score(TEST_SHARPE)),
                _num(v.score(TEST_ZSCORE)),
                _num(v.score(VAL_SHARPE)),
                (v.tags.get(TAG_CONTRACT) or "-")[:12],
                (v.sha256 or "-")[:12],
                v.run_id or "-",
                created,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _scores(info: VersionInfo) -> str:
    return f"held-out Sharpe {_num(info.score(TEST_SHARPE))}, z-score rule {_num(info.score(TEST_ZSCORE))}"


def run(args: argparse.Namespace, registry: Registry) -> int:
    if args.command == "list":
        versions = registry.versions(args.name)
        if args.json:
            print(json.dumps([v.as_json() for v in versions], indent=2))
            return 0
        print(f"{args.name} at {mask_url(registry.tracking_uri)}: {len(versions)} versions")
        print(table(versions))
        for alias in sorted({a for v in versions for a in v.aliases}):
            history = registry.history(args.name, alias)
            if history:
                print(f"{alias} history: {' → '.join(str(h) for h in history)}")
        return 0
    if args.command == "promote":
        info = registry.version(args.name, args.version)
        print(info.tags.get(TAG_VERDICT) or "verdict: none recorded")  # the one line, first
        move = registry.promote(args.name, args.version, args.alias, force=args.force)
        forced = ""
        if args.force:
            try:
                guard(info)
            except RegistryError:
                forced = " [--force: the promotion rule would refuse it]"
        print(f"{move.describe()} ({_scores(info)}){forced}")
        return 0
    move = registry.rollback(args.name, args.alias)
    print(f"{move.describe()} ({_scores(registry.version(args.name, move.after))})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        print("error: set MLFLOW_TRACKING_URI to the MLflow server that holds the registry", file=sys.stderr)
        return 2
    try:
        return run(args, Registry(uri))
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
