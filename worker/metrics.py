"""Prometheus metrics and the health endpoints: what an operator watches.
Metrics live in a registry per worker; the HTTP server (``METRICS_PORT``) runs
in a thread and only reads the worker's shared state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from worker.catalog import Catalog
    from worker.state import ServerState

logger = logging.getLogger(__name__)

MS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class BatchHistogram(Collector):
    """A Prometheus histogram fed a whole batch at a time: the per-entry queue
    time is 128 values a batch at full load, and ``Histogram.observe`` per value
    (a lock each) was 7 % of the worker's time. Exposed exactly like a
    ``Histogram`` (``_bucket``, ``_count``, ``_sum``)."""

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        # prometheus_client.utils has no annotations; it returns the label text.
        self._labels = [str(floatToGoString(b)) for b in buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()  # observed on the loop, collected by the HTTP thread
        registry.register(self)

    def observe_many(self, values: list[float]) -> None:
        arr = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self._bounds, arr, side="left"), minlength=len(self._labels))
        total = float(arr.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> list[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        return [
            HistogramMetricFamily(
                self.name,
                self.documentation,
                sum_value=total,
                buckets=list(zip(self._labels, cumulative, strict=True)),
            )
        ]


class Metrics:
    """Every metric the worker exports (see docs/operations.md)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.entries = Counter(
            "statpair_entries", "Entries answered, by status and error code", ["status", "error"], registry=r
        )
        self.queue_ms = BatchHistogram(
            "statpair_queue_ms", "Entry id time to read by a worker (ms), per entry", MS_BUCKETS, r
        )
        self.infer_ms = Histogram(
            "statpair_infer_ms", "Actor forward pass (ms), per batch", buckets=MS_BUCKETS, registry=r
        )
        self.latency_ms = Histogram(
            "statpair_latency_ms", "Read to results ready (ms), per batch", buckets=MS_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "statpair_batch_size", "Entries per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.reloads = Counter("statpair_model_reloads", "Models loaded and swapped in", registry=r)
        self.reload_failures = Counter(
            "statpair_model_reload_failures",
            "Model files that failed to load (the old model kept serving)",
            registry=r,
        )
        self.model = Info("statpair_model", "The model being served", registry=r)
        self.model_loaded = Gauge("statpair_model_loaded", "1 when a model is loaded", registry=r)
        # Only a worker whose model source is the registry has it (created on first sync).
        self.registry_up: Gauge | None = None
        self.lag = Gauge("statpair_group_lag", "Entries in the stream not yet read by the group", registry=r)
        self.pending = Gauge(
            "statpair_group_pending", "Entries read by the group but not acknowledged", registry=r
        )
        self.reclaimed = Counter("statpair_reclaimed", "Entries reclaimed from idle consumers", registry=r)
        self.dead_lettered = Counter(
            "statpair_dead_lettered", "Entries copied to the dead-letter stream", registry=r
        )
        self.redis_errors = Counter("statpair_redis_errors", "Failed Redis round trips (retried)", registry=r)
        self.redis_up = Gauge("statpair_redis_up", "1 when the last Redis call succeeded", registry=r)
        self.fleet_divergent = Gauge(
            "statpair_fleet_divergent",
            "Pair labels the live workers of this stream answer with different models (0: one fleet)",
            registry=r,
        )
        self.writes_refused = Gauge(
            "statpair_redis_writes_refused",
            "1 while Redis refuses writes (full, read-only): no new states are read meanwhile",
            registry=r,
        )
        # Labelled by the answering model's pair (or default): as many labels as models loaded.
        self.pair_answers = Counter(
            "statpair_pair_answers",
            "Ok answers by the model that gave them: its pair, or default",
            ["pair"],
            registry=r,
        )
        self._seen = {"reloads": 0, "failures": 0, "reclaimed": 0, "dead": 0, "redis_errors": 0}
        self._seen_pairs: dict[str, int] = {}
        self._lock = threading.Lock()  # sync() runs on the loop (heartbeat) and the HTTP thread

    def observe_batch(
        self, outcome: dict[str, int], infer_s: float, latency_s: float, queue_ms: list[float]
    ) -> None:
        for code, n in outcome.items():
            self.entries.labels(*(("ok", "") if code == "ok" else ("error", code))).inc(n)
        self.queue_ms.observe_many(queue_ms)
        self.infer_ms.observe(infer_s * 1e3)
        self.latency_ms.observe(latency_s * 1e3)
        self.batch_size.observe(len(queue_ms))

    def on_model(self, models: Catalog) -> None:
        m = models.primary
        self._inc(self.reloads, "reloads", models.reloads)
        self._inc(self.reload_failures, "failures", models.reload_failures)
        self.model_loaded.set(1 if m else 0)
        if m is not None:
            self.model.info(
                {
                    "path": m.path,
                    "sha256": m.sha256,
                    "backend": m.backend,
                    "mtime_utc": m.mtime_utc,
                    "state_dim": str(m.state_dim),
                    "source": m.provenance.get("source", "folder"),
                    "name": m.provenance.get("name", ""),
                    "version": m.version or "",
                    "run_id": m.run_id or "",
                }
            )

    def sync(self, state: ServerState) -> None:
        """Copy the worker's own counters into Prometheus counters."""
        st = state.stats
        self._inc(self.reclaimed, "reclaimed", st.reclaimed)
        self._inc(self.dead_lettered, "dead", st.dead_lettered)
        self._inc(self.redis_errors, "redis_errors", st.redis_errors)
        self.redis_up.set(1 if state.redis_up else 0)
        self.writes_refused.set(0 if state.refusal is None else 1)
        with self._lock:
            for pair, total in list(st.by_model.items()):
                seen = self._seen_pairs.get(pair, 0)
                if total > seen:
                    self.pair_answers.labels(pair).inc(total - seen)
                    self._seen_pairs[pair] = total
        source = state.models.source
        if source.kind == "registry":
            up = source.status().get("registry_up")
            with self._lock:
                if self.registry_up is None:
                    self.registry_up = Gauge(
                        "statpair_registry_up",
                        "1 when the model registry answered the last call (MODEL_URI)",
                        registry=self.registry,
                    )
            self.registry_up.set(1 if up else 0)

    def _inc(self, counter: Counter, key: str, total: int) -> None:
        with self._lock:
            if total > self._seen[key]:
                counter.inc(total - self._seen[key])
                self._seen[key] = total


SHADOW_FIGURES = (
    ("disagree_share", "Share of states where the challenger's side (short/flat/long) differs"),
    ("mean_abs_delta", "Mean |challenger action - champion action|"),
    ("p95_abs_delta", "95th percentile of |challenger action - champion action|"),
    ("correlation", "Correlation of the challenger's and the champion's actions"),
)


class ShadowCollector(Collector):
    """The challengers' figures at scrape time, labelled by the pair a challenger
    shadows (``*``: every pair) and the window (``window``: the last 1000 states,
    ``total``): as many labels as challengers loaded."""

    def __init__(self, state: ServerState, registry: CollectorRegistry) -> None:
        self.state = state
        registry.register(self)

    def collect(self) -> list[Any]:
        shadow = self.state.shadow
        if shadow is None:
            return []
        status = shadow.status()
        states = CounterMetricFamily("statpair_shadow_states", "States a challenger scored", labels=["pair"])
        dropped = CounterMetricFamily(
            "statpair_shadow_dropped", "States not scored: the shadow queue was full (shed)", labels=["pair"]
        )
        infer = GaugeMetricFamily(
            "statpair_shadow_infer_ms",
            "A challenger's forward pass (ms), p50 over its last batches",
            labels=["pair"],
        )
        families = [states, dropped, infer]
        gauges = {
            name: GaugeMetricFamily(f"statpair_shadow_{name}", doc, labels=["pair", "over"])
            for name, doc in SHADOW_FIGURES
        }
        for pair, fig in status["pairs"].items():
            states.add_metric([pair], fig["states"])
            dropped.add_metric([pair], fig["dropped"])
            if fig["shadow_infer_ms_p50"] is not None:
                infer.add_metric([pair], fig["shadow_infer_ms_p50"])
            for over in ("window", "total"):
                for name, gauge in gauges.items():
                    value = fig[over][name]
                    if value is not None:
                        gauge.add_metric([pair, over], value)
        return families + list(gauges.values())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_http(host: str, port: int, metrics: Metrics, state: ServerState) -> ThreadingWSGIServer:
    """``/metrics``, ``/healthz`` (alive, Redis reachable), ``/readyz`` (a model is loaded and
    Redis takes writes)."""
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            if path == "/healthz":
                ok, text = state.redis_up, "ok" if state.redis_up else "redis unreachable"
            elif state.refusal is not None:
                ok, text = False, f"Redis refuses writes: {state.refusal}"
            else:
                m = state.models.primary
                ok, text = m is not None, f"serving {m.sha256} ({m.backend})" if m else "no model loaded"
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")]
            )
            return [text.encode() + b"\n"]
        metrics.sync(state)
        body: list[bytes] = metrics_app(environ, start_response)
        return body

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    logger.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz", host, server.server_port)
    return server
