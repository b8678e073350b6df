"""Running one worker process in three phases, like uvicorn's server:
``startup`` (Redis, metrics, signals, control, the model, background tasks),
``main_loop`` (consume until stopped, then drain within a grace period) and
``shutdown`` (background tasks, heartbeat, consumer, connections)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import torch
from prometheus_client.exposition import ThreadingWSGIServer
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.catalog import Catalog
from worker.connection import Client, bounded_parser, parser_misfit, redis_client
from worker.control import Control
from worker.eviction import check_eviction
from worker.heartbeat import beat, heartbeat, heartbeat_key
from worker.loop import Worker
from worker.metrics import Metrics, ShadowCollector, serve_http
from worker.model import ModelManager
from worker.retry import Backoff, pause, retrying
from worker.settings import ConfigError, Settings
from worker.shadow import Shadow, record_to
from worker.state import ServerState

logger = logging.getLogger("worker")

# The largest reply a worker reads (MAX_REPLY_BYTES): a batch of 128 states is ~100 kB; past
# this the read is refused and its entries read again through the bounded script.
MAX_REPLY_BYTES = 32 << 20


def settle_heap(_models: object = None) -> None:
    """Collect, then freeze what is alive (imports, the model) out of the garbage
    collector's sight: a full collection over torch's ~200 000 objects paused the
    worker for 40-90 ms now and then; frozen, one takes microseconds. Run at
    start-up and after each model swap."""
    gc.collect()
    gc.freeze()


async def discover_cluster(redis: RedisCluster, url: str) -> None:
    """Learn the cluster's slots. No node reachable is a connection error (retried, as
    on one Redis); a node that is not in cluster mode, or refused credentials, is a
    setting to fix (one line, exit 2), not a traceback."""
    try:
        await redis.initialize()
    except RedisClusterException as exc:
        why = str(exc)
        if "Cluster mode is not enabled" in why:
            raise ConfigError(
                f"REDIS_CLUSTER=1 but {url} is not a cluster node (cluster mode is not enabled there): "
                "unset REDIS_CLUSTER, or name a node of the cluster"
            ) from None
        if "WRONGPASS" in why or "invalid username-password" in why or "NOAUTH" in why:
            raise ConfigError(f"the cluster at {url} refused REDIS_URL's user name and password") from None
        raise RedisConnectionError(why) from exc


class Server:
    def __init__(
        self,
        settings: Settings,
        redis: Client | None = None,
        *,
        max_messages: int | None = None,
        burst: bool = False,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self._owns_redis = redis is None
        bounded = False
        if redis is None:
            redis = redis_client(
                settings.redis_url,
                cluster=settings.redis_cluster,
                ca_file=settings.redis_ca_file,
                decode_responses=False,
                client_name=f"statpair-worker:{settings.consumer}",
                max_reply_bytes=MAX_REPLY_BYTES,
            )
            bounded = bounded_parser(MAX_REPLY_BYTES) is not None
            if not bounded:
                logger.warning(
                    "replies cannot be bounded here (%s): states are read through the bounded "
                    "script, at more Redis CPU a state",
                    parser_misfit() or "hiredis is not installed",
                )
        models = Catalog(ModelManager.from_settings(settings), settings)
        self.state = ServerState(
            settings, redis, models, stop=stop or asyncio.Event(), replies_bounded=bounded
        )
        # One consume loop per shard served (unsharded: one), sharing the state.
        self.workers = [
            Worker(self.state, streams, max_messages=max_messages, burst=burst)
            for streams in self.state.served
        ]
        self.metrics: Metrics | None = None
        self._http: ThreadingWSGIServer | None = None
        self._background: list[asyncio.Task[None]] = []
        self._signals: list[int] = []
        self._one_offs: set[asyncio.Future[object]] = set()
        self._joined = False  # past the start-up checks: its heartbeat and consumer are its own

    async def serve(self) -> ServerState:
        """Run until stopped (or the bounded mode ends); the state holds the counters."""
        try:
            await self.startup()
            if not self.state.stop.is_set():  # a SIGTERM while Redis was unreachable at start
                await self.main_loop()
        finally:
            await self.shutdown()
        return self.state

    # -- startup -------------------------------------------------------------------------

    async def startup(self) -> None:
        s, state = self.settings, self.state
        torch.set_num_threads(s.torch_threads)
        if s.metrics_port is not None:
            self.metrics = Metrics()
            for worker in self.workers:
                worker.answerer.observers.append(self.metrics.observe_batch)
            state.models.on_change.append(self.metrics.on_model)
            try:
                self._http = serve_http(s.metrics_host, s.metrics_port, self.metrics, state)
            except OSError as exc:
                why = (
                    "is already in use"
                    if exc.errno == errno.EADDRINUSE
                    else f"cannot be bound ({exc.strerror})"
                )
                raise ConfigError(f"METRICS_PORT {s.metrics_port} {why} on {s.metrics_host}") from None
        self._install_signals()
        if isinstance(state.redis, RedisCluster):
            # Before the first script call: concurrent first calls on an uninitialised
            # cluster client can race (redis-py#3935). Retried like any Redis call.
            cluster = state.redis
            await retrying(
                lambda: discover_cluster(cluster, s.redis_url_masked),
                state.stop,
                "discovering the cluster",
                backoff=Backoff(),
            )
        else:
            await self._check_database()
        if state.stop.is_set():
            return
        await retrying(lambda: check_eviction(state), state.stop, "reading Redis's memory policy")
        if state.stop.is_set():
            return
        await self._check_name()
        if state.stop.is_set():
            return
        self._joined = True
        logger.info(
            "worker %s: %s stream %s group %s, jit=%s",
            s.consumer,
            s.redis_url_masked,
            s.states_stream,
            s.group,
            s.jit,
        )
        # Control first: commands sent while the model loads are answered, not missed.
        self._spawn("control", Control(state).run)
        state.models.on_change.append(settle_heap)
        state.models.on_change.append(self._advertise)
        await state.models.check()
        settle_heap()
        self._spawn("model-watch", lambda: state.models.watch(s.watch_interval_s, state.stop))
        self._spawn("heartbeat", lambda: heartbeat(state, self.metrics))
        shadow = state.shadow = Shadow(
            state.models.challenger_for,
            s.shadow_fraction,
            s.dead_band,
            s.shadow_queue,
            record=record_to(state.redis, s.shadow_stream, s.shadow_maxlen) if s.shadow_stream else None,
        )
        self._spawn("shadow", lambda: shadow.run(state.stop))
        if self.metrics is not None:
            ShadowCollector(state, self.metrics.registry)

    async def _check_name(self) -> None:
        """Refuse to run beside a live worker of the same CONSUMER name: the two would take
        each other's pending entries for their own and answer them twice, and the first to
        stop would delete the other's heartbeat. A heartbeat of that name may also be a
        predecessor's that stopped without leaving (killed): it does not change, while a
        live worker rewrites it every HEARTBEAT_TTL_S / 3; so look twice, that far apart."""
        state, s = self.state, self.settings
        key = heartbeat_key(state)

        async def read() -> dict[bytes, bytes]:
            return cast(dict[bytes, bytes], await state.redis.hgetall(key))

        def who(beat: dict[bytes, bytes]) -> str:
            return f"host {beat.get(b'host', b'?').decode()}, pid {beat.get(b'pid', b'?').decode()}"

        first = await retrying(read, state.stop, "reading heartbeats", backoff=Backoff())
        if not first or first.get(b"instance") == state.instance.encode():
            return
        wait = s.heartbeat_ttl_s / 3 + 1.0
        logger.info(
            "a heartbeat of CONSUMER=%s is there (%s): waiting %.0f s to tell a live worker of that name "
            "from one that stopped without leaving",
            s.consumer,
            who(first),
            wait,
        )
        await pause(state.stop, wait)
        again = await retrying(read, state.stop, "reading heartbeats", backoff=Backoff())
        if again and again != first:
            raise ConfigError(
                f"CONSUMER={s.consumer} is taken by a live worker ({who(again)}): two workers of one name "
                "would answer each other's entries twice; give each worker its own CONSUMER"
            )
        logger.info("the heartbeat of CONSUMER=%s is not kept alive: taking the name over", s.consumer)

    async def _check_database(self) -> None:
        """One PING before any task starts (retried while Redis is down): a database the
        server does not have is a setting to fix, said once, not a task failing in a loop."""
        state = self.state
        try:
            await retrying(state.redis.ping, state.stop, "connecting to Redis", backoff=Backoff())
        except ResponseError as exc:
            if "DB index" not in str(exc):
                raise
            raise ConfigError(
                f"REDIS_URL {self.settings.redis_url_masked} names a database this Redis does not have "
                f"({exc}; see its `databases` setting)"
            ) from None

    def _advertise(self, _models: Catalog) -> None:
        """After a swap, publish the new model (heartbeat, contract) now, not at the next beat."""
        self._one_off(beat(self.state, self.metrics), "publishing the new model")

    def _one_off(self, work: Coroutine[Any, Any, object], what: str) -> None:
        """A task nobody awaits: held until done (so it is not collected mid-run), its
        failure logged (the periodic heartbeat, or the next watch, does it again)."""
        task = asyncio.ensure_future(work)
        self._one_offs.add(task)

        def done(t: asyncio.Future[object]) -> None:
            self._one_offs.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.warning("%s failed: %s", what, t.exception())

        task.add_done_callback(done)

    def _install_signals(self) -> None:
        loop, stop, models = asyncio.get_running_loop(), self.state.stop, self.state.models

        def stopper(sig: int) -> Callable[[], None]:
            def handler() -> None:
                if not stop.is_set():
                    logger.info(
                        "%s received: finishing the batch in hand, then exiting", signal.Signals(sig).name
                    )
                stop.set()

            return handler

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stopper(sig))
                self._signals.append(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(
                signal.SIGHUP, lambda: self._one_off(models.check(force=True), "SIGHUP reload")
            )
            self._signals.append(signal.SIGHUP)

    def _spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        self._background.append(asyncio.create_task(self._supervised(name, run), name=name))

    async def _supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a background task until the worker stops; if it raises, say so loudly
        and start it again (after a backoff): none may die silently."""
        backoff = Backoff(base=0.5, cap=10.0)
        while not self.state.stop.is_set():
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except AuthenticationError as exc:  # no restart cures it; the consume loop stops the worker
                logger.error("background task %s stopped: Redis refused the credentials (%s)", name, exc)
                return
            except Exception:
                delay = backoff.next_delay()
                logger.exception("background task %s failed; restarting it in %.1f s", name, delay)
                await pause(self.state.stop, delay)

    # -- main loop -----------------------------------------------------------------------

    async def main_loop(self) -> None:
        """Consume until stopped; then let the batch in hand finish within SHUTDOWN_GRACE_S."""
        s, stop = self.settings, self.state.stop
        consume = asyncio.create_task(self._consume(), name="consume")
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({consume, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not consume.done():
                done, _ = await asyncio.wait({consume}, timeout=s.shutdown_grace_s)
                if not done:
                    logger.warning(
                        "shutdown grace of %.1f s ran out; cancelling the batch in hand "
                        "(its entries stay pending and will be reclaimed)",
                        s.shutdown_grace_s,
                    )
                    consume.cancel()
            (outcome,) = await asyncio.gather(consume, return_exceptions=True)
            if isinstance(outcome, Exception):
                raise outcome
        finally:
            stop.set()
            stopping.cancel()
            consume.cancel()
            await asyncio.gather(consume, stopping, return_exceptions=True)

    async def _consume(self) -> None:
        """Every shard's consume loop; the first to fail takes the others down with it."""
        loops = [asyncio.create_task(w.run(), name=f"consume-{w.streams.shard}") for w in self.workers]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    # -- shutdown ------------------------------------------------------------------------

    async def shutdown(self) -> None:
        s, state = self.settings, self.state
        state.stop.set()
        if self._background:
            await asyncio.wait(self._background, timeout=max(2.0, s.block_ms / 1000 * 2))
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        if self._joined:  # else the heartbeat and consumer of that name may be another worker's
            await self._leave()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._owns_redis:
            await state.redis.aclose()
        logger.info("worker %s stopped after %d entries", s.consumer, state.stats.processed)

    async def _leave(self) -> None:
        """Remove the heartbeat, and this consumer from the group when it holds no
        pending entries (else they would be lost: a worker that left work behind
        stays listed until another claims it). Best effort: Redis may be gone."""
        redis = self.state.redis
        try:
            await redis.delete(heartbeat_key(self.state))
            for worker in self.workers:
                await worker.recovery.forget(self.settings.consumer)
        except (RedisError, RedisClusterException, OSError) as exc:
            logger.info("left the group as it was (%s)", exc)


async def serve(
    settings: Settings,
    redis: Client | None = None,
    *,
    max_messages: int | None = None,
    burst: bool = False,
    stop: asyncio.Event | None = None,
) -> ServerState:
    """Run one worker until ``stop`` is set (or the bounded mode ends); drain like
    uvicorn: signals only set ``stop``, the loop finishes the batch in hand,
    publishes and acknowledges it, and returns. Past ``SHUTDOWN_GRACE_S`` what is
    left is cancelled (its entries stay pending and are reclaimed by another
    worker). With ``redis`` the worker uses that client (and leaves it open)."""
    return await Server(settings, redis, max_messages=max_messages, burst=burst, stop=stop).serve()
