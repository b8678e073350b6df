"""The MLflow model registry as a model source (``MODEL_URI``): resolve the alias
every ``REGISTRY_POLL_S``, download the pinned version it names into
``MODEL_CACHE_DIR/<name>/<version>/`` once (checked against the sha256 recorded
at registration), and offer it to the model manager. Every registry call runs
on a thread and is awaited for a bounded time; an outage keeps the model being
served, a cold start during one serves the newest cached version.

Imported only when ``MODEL_URI`` is set; it brings ``tracking.registry`` in,
and mlflow comes with the first call, on that thread."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tracking.registry import (
    Cached,
    ModelRef,
    NotFound,
    Registry,
    RegistryError,
    RegistryUnavailable,
    VersionInfo,
    cached_versions,
    install,
    mark_rejected,
    parse_uri,
    prune,
)
from worker.offthread import Bounded
from worker.settings import ConfigError, Settings
from worker.sources import Candidate, SourceError

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_S = 60.0  # the first call imports mlflow (seconds on a loaded machine)
MAX_RETRIES = 1  # MLflow's HTTP retries per call (its default is 7)
KEEP_CACHED = 5  # versions kept in the cache (beside the one served)


class RegistrySource:
    """``models:/<name>@<alias>`` (follows the alias) or ``models:/<name>/<version>``."""

    kind = "registry"

    def __init__(
        self,
        ref: ModelRef,
        tracking_uri: str,
        cache_dir: Path,
        *,
        poll_s: float = 10.0,
        timeout_s: float = 5.0,
        download_timeout_s: float = 120.0,
        retry_failed_s: float = 600.0,
        shown_uri: str | None = None,
    ) -> None:
        self.ref = ref
        self.tracking_uri = tracking_uri
        self.shown_uri = shown_uri or tracking_uri  # for logs and status: no password
        self.cache_dir = cache_dir
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.download_timeout_s, self.retry_failed_s = download_timeout_s, retry_failed_s
        self.up: bool | None = None  # None: not asked yet
        self.down_since: float | None = None  # wall clock, for status
        self.outages = 0
        self.polls = 0  # times the registry was asked
        self.last_error: str | None = None
        self.resolved: int | None = None  # what the registry last said to serve
        self.serving_cached = False  # offered from the cache because the registry did not answer
        self._registry: Registry | None = None
        self._calls = Bounded("registry", RegistryUnavailable)
        self._next_poll = 0.0
        self._offer: Candidate | None = None
        self._serving: int | None = None
        self._bad: dict[int, tuple[float, str]] = {}  # version → (monotonic time to retry, why)
        self._attempts: dict[int, int] = {}
        self._said: str | None = None  # the last once-only message, so it is not repeated

    @classmethod
    def from_settings(
        cls, s: Settings, uri: str | None = None, cache_dir: Path | None = None
    ) -> RegistrySource:
        """The registry source of MODEL_URI, or of ``uri`` (a per-pair model, a challenger)."""
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("MODEL_URI needs MLflow's client: pip install mlflow-skinny (or mlflow)")
        # MLflow's HTTP client (urllib3) warns at every retry: during an outage that is
        # a line per poll, where the worker says it once (see _down).
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        uri = uri or s.model_uri
        assert uri is not None and s.mlflow_tracking_uri is not None  # the settings check both
        return cls(
            parse_uri(uri),
            s.mlflow_tracking_uri,
            cache_dir or s.model_cache_dir,
            poll_s=s.registry_poll_s,
            timeout_s=s.registry_timeout_s,
            download_timeout_s=s.registry_download_timeout_s,
            retry_failed_s=s.registry_retry_failed_s,
            shown_uri=s.mlflow_tracking_uri_masked,
        )

    def describe(self) -> str:
        return f"{self.ref} ({self.shown_uri})"

    # -- what to serve ---------------------------------------------------------------------

    async def poll(self, force: bool = False) -> Candidate | None:
        """What to serve now. Talks to the registry at most every ``poll_s`` (or when
        forced); between polls, and through outages, it answers its last offer."""
        now = time.monotonic()
        if not force and now < self._next_poll:
            return self._offer
        self._next_poll = now + self.poll_s
        self.polls += 1
        if force:
            self._bad.clear()
        try:
            info = await self._bounded(self._resolve, self.timeout_s)
        except RegistryUnavailable as exc:
            self._down(str(exc))
            return self._offer if self._serving is not None else await self._from_cache()
        except RegistryError as exc:  # it answered: no such alias/version/model, or a refusal
            self._answered()
            level = logging.WARNING if isinstance(exc, NotFound) else logging.ERROR
            self._once(level, f"{exc}; {self._keeping()}")
            self.last_error = str(exc)
            return self._offer
        self._answered()
        moved = info.version != self.resolved  # a promotion (or a rollback) is a new attempt
        self.resolved = v = info.version
        if v in self._bad:
            retry_at, why = self._bad[v]
            if not moved and time.monotonic() < retry_at:
                return self._offer
            del self._bad[v]
            self._attempts[v] = self._attempts.get(v, 0) + 1
            logger.info("trying version %d of %s again (it failed: %s)", v, self.ref.name, why)
        elif self._offer is not None and self._offer.provenance.get("version") == str(v):
            self.serving_cached = False  # the registry confirms what the cache gave
            return self._offer
        if info.status == "PENDING_REGISTRATION":
            self._once(logging.INFO, f"version {v} of {self.ref.name} is still being registered; waiting")
            return self._offer
        try:
            if info.status != "READY":
                raise RegistryError(f"its registration ended {info.status}")
            entry = await self._bounded(lambda: self._fetch(info), self.download_timeout_s)
        except RegistryUnavailable as exc:
            self._down(str(exc))
            return self._offer if self._serving is not None else await self._from_cache()
        except RegistryError as exc:
            self._bad[v] = (time.monotonic() + self.retry_failed_s, str(exc))
            raise SourceError(f"{self.ref} → version {v}: {exc}; {self._retry_note()}") from None
        self._offer = self._candidate(entry)
        self.serving_cached = False
        return self._offer

    def accepted(self, candidate: Candidate) -> None:
        version = int(candidate.provenance["version"])
        self._serving = version
        if self.serving_cached:
            logger.warning(
                "the registry does not answer: serving version %d of %s, the newest in the cache "
                "(%s), until it does",
                version,
                self.ref.name,
                candidate.path.parent,
            )
        with contextlib.suppress(RuntimeError):  # no loop: nothing to tidy
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, prune, self.cache_dir, self.ref.name, {version}, KEEP_CACHED)

    def rejected(self, candidate: Candidate, reason: str) -> None:
        version = int(candidate.provenance["version"])
        self._bad[version] = (time.monotonic() + self.retry_failed_s, reason)
        logger.warning("version %d of %s: %s", version, self.ref.name, self._retry_note())
        entry = Cached(self.ref.name, version, candidate.path, candidate.sha256 or "", None, {})
        mark_rejected(entry, reason)  # one small file: a restart's cache fallback skips it

    def _retry_note(self) -> str:
        return (
            f"keeping {self._serving_text()}; it is tried again when {self.ref} moves "
            f"or in {self.retry_failed_s:.0f} s"
            if self.ref.alias
            else f"keeping {self._serving_text()}; it is tried again in {self.retry_failed_s:.0f} s"
        )

    def _serving_text(self) -> str:
        return f"version {self._serving}" if self._serving is not None else "no model"

    def _keeping(self) -> str:
        if self._serving is None:
            return "answering model_unavailable meanwhile"
        return f"keeping version {self._serving}"

    async def _from_cache(self) -> Candidate | None:
        """Cold start without the registry: the newest cached version not known bad."""
        entries = await asyncio.to_thread(cached_versions, self.cache_dir, self.ref.name)
        for entry in entries:
            if self.ref.version is not None and entry.version != self.ref.version:
                continue
            if entry.version in self._bad or entry.rejected:
                continue
            self._offer = self._candidate(entry)
            self.serving_cached = True
            return self._offer
        return None

    def _candidate(self, entry: Cached) -> Candidate:
        provenance = {
            "source": "registry",
            "uri": str(self.ref),
            "name": entry.name,
            "version": str(entry.version),
            "run_id": entry.run_id or "",
        }
        key = (entry.name, entry.version, entry.sha256, self._attempts.get(entry.version, 0))
        return Candidate(entry.path, key, provenance, sha256=entry.sha256)

    # -- registry calls (on a thread, bounded) ---------------------------------------------

    def _resolve(self) -> VersionInfo:
        assert self._registry is not None
        return self._registry.resolve(self.ref)

    def _fetch(self, info: VersionInfo) -> Cached:
        registry = self._registry
        assert registry is not None
        try:
            return install(self.cache_dir, info, lambda dest: registry.download(info, dest))
        except OSError as exc:  # the cache folder, not the registry
            raise RegistryError(f"the cache {self.cache_dir} cannot hold it: {exc}") from exc

    def _connect(self) -> Registry:
        try:
            return Registry(self.tracking_uri, timeout_s=self.timeout_s, max_retries=MAX_RETRIES)
        except RegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a URI MLflow cannot use: said once by poll
            raise RegistryError(f"MLflow cannot use {self.shown_uri}: {type(exc).__name__}: {exc}") from None

    async def _bounded(self, fn: Callable[[], T], timeout_s: float) -> T:
        """``fn()`` on the registry's thread, awaited at most ``timeout_s``; the first
        call builds the client (importing mlflow) with a longer bound."""
        if self._registry is None:
            self._registry = await self._calls.call(self._connect, max(CONNECT_S, timeout_s))
        return await self._calls.call(fn, timeout_s)

    # -- up or down ------------------------------------------------------------------------

    def _down(self, why: str) -> None:
        self.last_error = why
        if self.up is False:
            return
        self.up = False
        self.down_since = time.time()
        self.outages += 1
        logger.warning(
            "model registry at %s does not answer (%s): %s; asking again every %g s",
            self.shown_uri,
            why,
            self._keeping_through_outage(),
            self.poll_s,
        )

    def _keeping_through_outage(self) -> str:
        if self._serving is not None:
            return f"serving version {self._serving} of {self.ref.name} meanwhile"
        return "no model yet"

    def _answered(self) -> None:
        if self.up is False and self.down_since is not None:
            logger.info(
                "model registry at %s answers again after %.0f s",
                self.shown_uri,
                time.time() - self.down_since,
            )
        self.up, self.down_since = True, None
        self.last_error = None

    def _once(self, level: int, message: str) -> None:
        if message != self._said:
            logger.log(level, "%s", message)
            self._said = message

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "uri": str(self.ref),
            "tracking_uri": self.shown_uri,
            "registry_up": self.up,
            "down_since_utc": _utc(self.down_since),
            "outages": self.outages,
            "polls": self.polls,
            "last_registry_error": self.last_error,
            "resolved_version": self.resolved,
            "serving_cached": self.serving_cached,
            "failed_versions": {str(v): why for v, (_, why) in sorted(self._bad.items())},
            "cache_dir": str(self.cache_dir),
            "poll_s": self.poll_s,
        }


def _utc(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
