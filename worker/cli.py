"""``python -m worker``: arguments, settings, logging, and running the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import textwrap
from collections.abc import Coroutine
from typing import Any

from pydantic import ValidationError
from redis.exceptions import AuthenticationError, RedisError

from worker.settings import ConfigError, Settings, describe, misspelt_settings, settings_help


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is below 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m worker",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Serve the SAC policy: read market states from a Redis stream through a consumer "
            "group, answer each with an action, publish and acknowledge them together."
        ),
        epilog="settings (environment variables, read once at start):\n\n"
        + textwrap.indent(settings_help(), "  "),
    )
    p.add_argument(
        "--max-messages", type=_count, default=None, help="exit after answering this many entries (0 or more)"
    )
    p.add_argument("--burst", action="store_true", help="exit once the stream is drained")
    return p.parse_args(argv)


def _run(main: Coroutine[Any, Any, object]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe(exc), file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for var, meant in misspelt_settings(os.environ):
        line = f"environment variable {var} is not a setting of the worker: did you mean {meant}?"
        if settings.strict_settings:
            print(f"invalid configuration: {line} (STRICT_SETTINGS=1)", file=sys.stderr)
            return 2
        logging.getLogger("worker").warning("%s It is ignored.", line)
    from worker.server import serve  # torch: imported once the settings are known good

    try:
        _run(serve(settings, max_messages=args.max_messages, burst=args.burst))
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    except AuthenticationError as exc:
        print(
            f"invalid configuration: Redis at {settings.redis_url_masked} refused REDIS_URL's user name "
            f"and password ({exc})",
            file=sys.stderr,
        )
        return 2
    except RedisError as exc:  # an error reply no retry can cure (e.g. WRONGTYPE on the stream)
        logging.getLogger("worker").error("stopped: Redis answered an error no retry can cure: %s", exc)
        return 1
    return 0
