"""``python -m worker``: arguments, logging, signals, and running the worker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable

import torch
from pydantic import ValidationError

from worker.connection import redis_client
from worker.control import Control
from worker.loop import Worker
from worker.metrics import Metrics, heartbeat, serve_http
from worker.model import ModelManager
from worker.settings import Settings

logger = logging.getLogger("worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m worker",
        description="Serve the SAC policy: read states from a Redis stream, publish actions. "
        "Configured by environment variables (see README, Configuration).",
    )
    p.add_argument("--max-messages", type=int, default=None, help="exit after answering this many entries")
    p.add_argument("--burst", action="store_true", help="exit once the stream is drained")
    return p.parse_args(argv)


def settle_heap(_models: object = None) -> None:
    """Collect, then freeze what is alive (imports, the model) out of the garbage
    collector's sight: a full collection over torch's ~200 000 objects paused the
    worker for 40-90 ms now and then; frozen, one takes microseconds. Run at
    start-up and after each model swap."""
    gc.collect()
    gc.freeze()


async def serve(
    settings: Settings,
    max_messages: int | None = None,
    burst: bool = False,
    stop: asyncio.Event | None = None,
) -> Worker:
    """Run one worker until ``stop`` is set (or the bounded mode ends); drain like uvicorn.

    Signals only set ``stop``; the loop finishes the batch in hand, publishes and
    acknowledges it, and returns. Past ``shutdown_grace_s`` what is left is cancelled
    (its entries stay pending and are reclaimed by another worker).
    """
    torch.set_num_threads(settings.torch_threads)
    stop = stop or asyncio.Event()
    redis = redis_client(
        settings.redis_url, decode_responses=False, client_name=f"statpair-worker:{settings.consumer}"
    )
    models = ModelManager(settings.model_path, settings.model_dir, settings.jit)
    worker = Worker(settings, redis, models, stop=stop, max_messages=max_messages, burst=burst)
    metrics = http = None
    if settings.metrics_port is not None:
        metrics = Metrics()
        worker.observers.append(metrics.observe_batch)
        models.on_change.append(metrics.on_model)
        http = serve_http(settings.metrics_host, settings.metrics_port, metrics, worker)
    loop = asyncio.get_running_loop()
    handled: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _stopper(stop, sig))
            handled.append(sig)
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(models.check(force=True)))
        handled.append(signal.SIGHUP)
    logger.info(
        "worker %s: %s stream %s group %s, jit=%s",
        settings.consumer,
        settings.redis_url_masked,
        settings.states_stream,
        settings.group,
        settings.jit,
    )
    # Control first: commands sent while the model loads are answered, not missed.
    background = [asyncio.create_task(Control(worker).run(), name="control")]
    models.on_change.append(settle_heap)
    await models.check()
    settle_heap(models)
    background += [
        asyncio.create_task(models.watch(settings.watch_interval_s, stop), name="model-watch"),
        asyncio.create_task(heartbeat(worker, metrics), name="heartbeat"),
    ]
    main_task = asyncio.create_task(worker.run(), name="consume")
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({main_task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not main_task.done():
            done, _ = await asyncio.wait({main_task}, timeout=settings.shutdown_grace_s)
            if not done:
                logger.warning(
                    "shutdown grace of %.1f s ran out; cancelling the batch in hand "
                    "(its entries stay pending and will be reclaimed)",
                    settings.shutdown_grace_s,
                )
                main_task.cancel()
        (outcome,) = await asyncio.gather(main_task, return_exceptions=True)
        if isinstance(outcome, Exception):
            raise outcome
    finally:
        stop.set()
        stopping.cancel()
        if not main_task.done():
            main_task.cancel()
        await asyncio.wait(background, timeout=max(2.0, settings.block_ms / 1000 * 2))
        for task in background:
            task.cancel()
        await asyncio.gather(*background, main_task, stopping, return_exceptions=True)
        for sig in handled:
            loop.remove_signal_handler(sig)
        if http is not None:
            http.shutdown()
            http.server_close()
        await redis.aclose()
        logger.info("worker %s stopped after %d entries", settings.consumer, worker.stats.processed)
    return worker


def _stopper(stop: asyncio.Event, sig: int) -> Callable[[], None]:
    def handler() -> None:
        if not stop.is_set():
            logger.info("%s received: finishing the batch in hand, then exiting", signal.Signals(sig).name)
        stop.set()

    return handler


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    runner(serve(settings, max_messages=args.max_messages, burst=args.burst))
    return 0
