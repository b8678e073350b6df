"""``register``: what ``python -m agent.train --register <name>`` calls when a run
ends. It follows the tracker's rule: MLflow being unset, down or refusing never
fails training; the checkpoint stays where it is and the note says why it was
not registered."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tracking.registry.refs import RegistryError, VersionInfo, check_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registered:
    """The outcome of a registration: the new version (None: not registered) and one line saying so."""

    name: str
    version: VersionInfo | None
    note: str


def register(
    name: str,
    checkpoint_path: str | os.PathLike[str],
    run_id: str | None,
    tags: Mapping[str, object],
    *,
    tracking_uri: str | None = None,
    await_s: int = 60,
) -> Registered:
    """Register ``checkpoint_path`` as a new version of ``name``, logged to (and
    linked with) MLflow run ``run_id``, tagged with ``tags`` plus its sha256 and file
    name. ``MLFLOW_TRACKING_URI`` names the server unless ``tracking_uri`` is given.
    Never raises for MLflow's sake: the outcome says what happened."""
    path = Path(checkpoint_path)
    check_name(name)  # a caller's mistake, not MLflow's: raised (the trainer checks it up front)
    uri = (tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI", "")).strip()
    if not uri:
        return _skipped(name, path, "MLFLOW_TRACKING_URI is not set")
    if run_id is None:
        return _skipped(name, path, "the run was not tracked (MLflow did not answer when training started)")
    try:
        from tracking.registry.client import Registry

        info = Registry(uri).create_version(
            name, path, run_id, {str(k): str(v) for k, v in tags.items()}, await_s
        )
    except RegistryError as exc:
        return _skipped(name, path, str(exc))
    except Exception as exc:  # noqa: BLE001 - the tracker's rule: MLflow never fails training
        return _skipped(name, path, f"{type(exc).__name__}: {exc}")
    if info.status != "READY":
        note = (
            f"registered {path.name} as version {info.version} of {name}, but it is still {info.status}; "
            f"check it with: python -m tracking.registry list {name}"
        )
        logger.warning("%s", note)
        return Registered(name, info, note)
    note = (
        f"registered {path.name} as version {info.version} of {name} (sha256 {str(info.sha256)[:12]}…, "
        f"run {run_id}); promote it with: python -m tracking.registry promote {name} {info.version} "
        "--alias champion"
    )
    logger.info("%s", note)
    return Registered(name, info, note)


def _skipped(name: str, path: Path, why: str) -> Registered:
    note = f"registration as {name} skipped: {why}; the checkpoint is still at {path}"
    logger.warning("%s", note)
    return Registered(name, None, note)
