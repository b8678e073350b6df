"""MLflow's HTTP client bounds, shared by the tracker and the registry, and a probe that
tells a slow MLflow server from one that does not answer at all.

MLflow's own defaults (7 retries, backoff factor 2, a 120 s timeout) can hold one call for
minutes. statpair tightens them through MLflow's environment variables, which MLflow reads
at each request, unless the user set them: a value the user set always wins; a value
statpair set may be changed by a later caller that needs another bound (the trainer's
registration, after the run, waits longer per call than the tracker during it)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

_ours: dict[str, str] = {}  # the variables statpair set, with the value it set


def _set(name: str, value: str) -> None:
    current = os.environ.get(name)
    if current is not None and _ours.get(name) != current:
        return  # the user's
    os.environ[name] = _ours[name] = value


def bound_http(timeout_s: float, max_retries: int, backoff_factor: int = 1) -> None:
    """Bound each MLflow HTTP call to ``timeout_s`` and ``max_retries`` retries, unless
    the user set these variables."""
    _set("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(-(-timeout_s // 1)))))
    _set("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max(0, max_retries)))
    _set("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(backoff_factor))
    _set("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in a service's log


def answers(tracking_uri: str, timeout_s: float = 2.0) -> bool:
    """Whether an http(s) tracking server answers at all (any HTTP status counts) within
    ``timeout_s``: alive, however slow its API calls are, as opposed to down or hung.
    Another kind of URI (a local store) is taken as answering."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return True
    try:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return False
    host = f"[{host}]" if ":" in host else host
    url = f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}/health"  # no credentials in it
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True  # an answer, if not a happy one (a proxy without /health)
    except (OSError, ValueError):
        return False
