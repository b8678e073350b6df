"""``python -m worker``: arguments, logging, signals, and running the worker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

import torch
from pydantic import ValidationError
from redis.asyncio import Redis

from worker.control import Control
from worker.loop import Worker
from worker.model import ModelManager
from worker.settings import Settings

logger = logging.getLogger("worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m worker",
        description="Serve the SAC policy: read states from a Redis stream, publish actions. "
                    "Configured by environment variables (see README, Configuration).",
    )
    p.add_argument("--max-messages", type=int, default=None,
                   help="exit after answering this many entries")
    p.add_argument("--burst", action="store_true", help="exit once the stream is drained")
    return p.parse_args(argv)


async def serve(settings: Settings, max_messages: int | None = None, burst: bool = False,
                stop: asyncio.Event | None = None) -> None:
    """Run one worker until ``stop`` is set (or the bounded mode ends)."""
    torch.set_num_threads(settings.torch_threads)
    stop = stop or asyncio.Event()
    redis = Redis.from_url(settings.redis_url, decode_responses=False,
                           client_name=f"statpair-worker:{settings.consumer}")
    models = ModelManager(settings.model_path, settings.model_dir, settings.jit)
    worker = Worker(settings, redis, models, stop=stop, max_messages=max_messages, burst=burst)
    loop = asyncio.get_running_loop()
    handled: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(models.check(force=True)))
        handled.append(signal.SIGHUP)
    logger.info("worker %s: %s stream %s group %s, jit=%s", settings.consumer,
                settings.redis_url_masked, settings.states_stream, settings.group, settings.jit)
    await models.check()
    background = [
        asyncio.create_task(models.watch(settings.watch_interval_s, stop), name="model-watch"),
        asyncio.create_task(Control(worker).run(), name="control"),
    ]
    try:
        await worker.run()
    finally:
        stop.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for sig in handled:
            loop.remove_signal_handler(sig)
        await redis.aclose()
        logger.info("worker %s stopped after %d entries", settings.consumer, worker.stats.processed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    runner(serve(settings, max_messages=args.max_messages, burst=args.burst))
    return 0
