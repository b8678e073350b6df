"""``MlflowTracker``: a context manager that training uses unconditionally and
that does nothing unless ``MLFLOW_TRACKING_URI`` is set.

It can never crash or stall training: every MLflow call runs on one background
thread fed by a bounded queue, so a ``log_*`` call only enqueues; a failure is
logged and swallowed, repeated failures switch the tracker off. Entering the
context waits at most ``start_timeout_s`` for the run to start (so that ``run_id``
is usually known). Leaving it waits for the pending calls (the run's start
included) as long as the server keeps answering, at most ``close_timeout_s``
seconds, and gives up sooner, saying so, when no call finishes for ``stall_s``
or when a server that never started the run does not answer at all: a slow
server on a loaded host finishes the run, a dead one costs seconds. MLflow's own
HTTP retries (minutes by default) are tightened unless the user set them.

The tracker reads its two documented variables (``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``) itself: it is the tracking contract, and this
package imports nothing of the project.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tracking.calls import Artifact, End, Metrics, Op, Params, Start, Stop, Tags
from tracking.http import answers, bound_http

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation), repeated so mlflow need not be imported.
MAX_PARAM_VALUE_CHARS = 6000
MAX_KEY_CHARS = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

# Each call during the run: at most a 5 s timeout and 2 retries (backoff factor 1),
# unless the user set MLflow's variables (tracking.http).
HTTP_TIMEOUT_S = 5.0
HTTP_RETRIES = 2
SAY_WAITING_AFTER_S = 3.0  # leaving the context: say that it waits for MLflow after this long


def mask_url(url: str) -> str:
    """The URL with any password (``user:pass@`` or ``?password=``) replaced by ``***``
    (the user name kept, even when empty). The worker keeps a twin
    (worker.settings.mask_url): this package imports nothing of the project."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. an unclosed IPv6 bracket: show nothing rather than the secret
        return "<unparseable url>"
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"  # host as written
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else f"{k}={v}" if sep else k
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    masked = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # urlunsplit writes unix:///s.sock as unix:/s.sock: keep the form the user wrote
    return masked.replace(":", "://", 1) if url.startswith(f"{parts.scheme}://") and not netloc else masked


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def is_finite(value: Any) -> bool:
    """True for a real number that is not NaN or ±inf."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_VALUE_CHARS else text[: MAX_PARAM_VALUE_CHARS - 3] + "..."


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class MlflowTracker(AbstractContextManager["MlflowTracker"]):
    """Log a training run to MLflow when configured; otherwise a no-op.

    ``MLFLOW_EXPERIMENT_NAME`` overrides ``experiment``. Methods never raise.
    """

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        tracking_uri: str | None = None,
        start_timeout_s: float = 2.0,
        close_timeout_s: float = 60.0,
        stall_s: float = 20.0,
        max_failures: int = 3,
        queue_size: int = 10_000,
    ) -> None:
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or experiment
        self.run_name = run_name
        self.params = dict(params or {})
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        uri = tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI", "")
        self.tracking_uri = uri.strip()
        self.start_timeout_s = start_timeout_s
        self.close_timeout_s = close_timeout_s
        self.stall_s = stall_s
        self._finished = 0  # calls the background thread has finished (done or failed)
        self.max_failures = max_failures
        self.run_id: str | None = None
        self.dropped_metrics = 0  # non-finite or non-numeric values never sent
        self.dropped_calls = 0  # calls lost to a full queue or a disabled tracker
        self.errors = 0  # MLflow calls that failed, in all
        self._in_a_row = 0
        self.disabled_reason: str | None = None
        self._enabled = bool(self.tracking_uri)
        self._queue: queue.Queue[Op | Stop] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._abandoned = threading.Event()
        self._start_done = threading.Event()
        self._lock = threading.Lock()
        if not self._enabled:
            self.disabled_reason = "MLFLOW_TRACKING_URI is not set"
            logger.debug("experiment tracking off: %s", self.disabled_reason)

    # -- state ---------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._enabled

    def _disable(self, reason: str) -> None:
        with self._lock:
            if not self._enabled:
                return
            self._enabled = False
            self.disabled_reason = reason
        logger.warning("experiment tracking disabled: %s", reason)

    # -- context -------------------------------------------------------------------------

    def __enter__(self) -> MlflowTracker:
        if not self._enabled:
            return self
        bound_http(HTTP_TIMEOUT_S, HTTP_RETRIES)
        try:
            import mlflow  # noqa: F401 - optional dependency, imported only when configured
        except ImportError:
            self._disable(
                "MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install 'statpair[mlflow]')"
            )
            return self
        self._thread = threading.Thread(target=self._run, name="mlflow-tracker", daemon=True)
        self._thread.start()
        self._put(Start())
        if self.params:
            self.log_params(self.params)
        # Wait briefly so that run_id is known (checkpoints record it); a slow
        # or dead server costs at most start_timeout_s here, once.
        self._start_done.wait(self.start_timeout_s)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return None
        status = "FINISHED" if exc_type is None else "FAILED"
        # A run that has not started by now is on a server that is slow or does not answer.
        # Slow (it answers /health): wait for it as for any pending call. Silent: give it no
        # more than the start timeout again. A local store (sqlite, file, a database URI)
        # may just be creating its tables on first use: it is waited for.
        alive = self._start_done.is_set() or answers(self.tracking_uri, timeout_s=HTTP_TIMEOUT_S)
        wait = self.close_timeout_s if alive else min(self.close_timeout_s, self.start_timeout_s)
        started = time.monotonic()
        try:
            self._queue.put(End(status), timeout=wait)
            self._queue.put(Stop(), timeout=max(0.0, wait - (time.monotonic() - started)))
        except queue.Full:
            pass
        why = self._join(started + wait)
        if why is not None:
            self._abandoned.set()
            self._disable(f"{why}; pending calls were abandoned")
        return None  # never swallow the block's exception

    def _join(self, deadline: float) -> str | None:
        """Wait for the background thread to finish its calls, until ``deadline``, or
        until no call has finished for ``stall_s``; why it gave up (None: done)."""
        assert self._thread is not None
        begun = last_change = time.monotonic()
        seen, said = self._finished, False
        while self._thread.is_alive():
            now = time.monotonic()
            if now >= deadline:
                if self._start_done.is_set() or now - begun >= self.close_timeout_s:
                    return f"MLflow did not finish within {now - begun:.0f} s at the end of the run"
                return f"MLflow did not answer within {now - begun:.0f} s at the end of the run"
            if now - last_change >= self.stall_s:
                return (
                    f"MLflow stopped answering: no call finished in {self.stall_s:.0f} s "
                    "at the end of the run"
                )
            if not said and now - begun >= SAY_WAITING_AFTER_S:
                said = True
                logger.info(
                    "waiting for MLflow at %s to finish the run (%d calls pending; at most %.0f s)",
                    self._uri_for_log(),
                    self._queue.unfinished_tasks,
                    deadline - begun,
                )
            self._thread.join(min(0.1, max(0.0, deadline - now)))
            if self._finished != seen:
                seen, last_change = self._finished, time.monotonic()
        return None

    # -- public API: enqueue only ------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        try:
            flat = {str(k)[:MAX_KEY_CHARS]: _param_value(v) for k, v in flatten_params(params).items()}
        except Exception as exc:  # noqa: BLE001 - never raise into training
            logger.warning("tracker: bad params ignored: %s", exc)
            return
        for chunk in _chunks(sorted(flat.items()), MAX_PARAMS_PER_BATCH):
            self._put(Params(tuple(chunk)))

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        try:
            good = []
            for key, value in metrics.items():
                if isinstance(value, bool) or not is_finite(value):
                    self.dropped_metrics += 1
                    continue
                good.append((str(key)[:MAX_KEY_CHARS], float(value)))
        except Exception as exc:  # noqa: BLE001
            logger.warning("tracker: bad metrics ignored: %s", exc)
            return
        stamp = int(time.time() * 1000)
        for chunk in _chunks(good, MAX_METRICS_PER_BATCH):
            self._put(Metrics(tuple(chunk), stamp, int(step or 0)))

    def log_metric(self, key: str, value: Any, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def set_tag(self, key: str, value: Any) -> None:
        self._put(Tags(((str(key)[:MAX_KEY_CHARS], str(value)[:MAX_PARAM_VALUE_CHARS]),)))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._put(Artifact(str(path), artifact_path))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued call is done (True) or ``timeout_s`` passes (False)."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + (self.close_timeout_s if timeout_s is None else timeout_s)
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            if not self._thread.is_alive():
                return False
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _put(self, item: Op) -> None:
        if not self._enabled or self._thread is None:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped_calls += 1

    # -- the background thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if isinstance(item, Stop):
                    return
                self._handle(item)
            finally:
                self._finished += 1
                self._queue.task_done()

    def _handle(self, item: Op) -> None:
        if not self._enabled and not isinstance(item, End):
            self.dropped_calls += 1
            return
        try:
            self._do(item)
            self._in_a_row = 0
        except Exception as exc:  # noqa: BLE001 - MLflow errors must never escape
            self._failed(item, exc)

    def _failed(self, item: Op, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if isinstance(item, Start):
            self._disable(f"could not start an MLflow run at {self._uri_for_log()}: {reason}")
            return
        self.errors += 1
        self._in_a_row += 1
        logger.warning(
            "tracker: %s failed (%d in a row, disabling at %d): %s",
            item.what,
            self._in_a_row,
            self.max_failures,
            reason,
        )
        if self._in_a_row >= self.max_failures:
            self._disable(f"{self._in_a_row} MLflow calls in a row failed; last: {reason}")

    def _uri_for_log(self) -> str:
        return mask_url(self.tracking_uri)

    def _do(self, item: Op) -> None:
        if isinstance(item, Start):
            try:
                self._start()
            finally:
                self._start_done.set()
            return
        if self.run_id is None:  # the run never started: only the end is not a lost call
            if not isinstance(item, End):
                self.dropped_calls += 1
            return
        item.send(self._client, self.run_id)

    def _start(self) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
        run = client.create_run(exp_id, run_name=self.run_name, tags=self.tags)
        self._client = client
        self.run_id = run.info.run_id
        if self._abandoned.is_set():  # the run started after training gave up waiting
            client.set_terminated(self.run_id, status="KILLED")
            return
        logger.info("MLflow run %s in experiment %r at %s", self.run_id, self.experiment, self._uri_for_log())
