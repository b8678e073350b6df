"""``register``: what ``python -m agent.train --register <name>`` calls when a run
ends. It follows the tracker's rule: MLflow being unset, down or refusing never
fails training; the checkpoint stays where it is and the note says why it was
not registered."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tracking.registry.refs import RegistryError, VersionInfo, check_name

logger = logging.getLogger(__name__)

# After a training run (``patient``), nothing waits on the registration but the user: each
# call may take a loaded server this long (2 retries), and the whole registration this long.
PATIENT_CALL_S = 30.0
PATIENT_DEADLINE_S = 300.0


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
    patient: bool = False,
) -> Registered:
    """Register ``checkpoint_path`` as a new version of ``name``, logged to (and
    linked with) MLflow run ``run_id``, tagged with ``tags`` plus its sha256 and file
    name. ``MLFLOW_TRACKING_URI`` names the server unless ``tracking_uri`` is given.
    ``patient`` (the trainer, once its run has ended): a slow server gets PATIENT_CALL_S
    a call and PATIENT_DEADLINE_S in all, and giving up is said. Never raises for
    MLflow's sake: the outcome says what happened."""
    path = Path(checkpoint_path)
    check_name(name)  # a caller's mistake, not MLflow's: raised (the trainer checks it up front)
    uri = (tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI", "")).strip()
    if not uri:
        return _skipped(name, path, "MLFLOW_TRACKING_URI is not set")
    if run_id is None:
        return _skipped(name, path, "the run was not tracked (MLflow never started it)")
    outcome: list[VersionInfo | str] = []

    def create() -> None:
        try:
            from tracking.registry.client import Registry

            registry = Registry(uri, timeout_s=PATIENT_CALL_S) if patient else Registry(uri)
            texts = {str(k): str(v) for k, v in tags.items()}
            outcome.append(registry.create_version(name, path, run_id, texts, await_s))
        except RegistryError as exc:
            outcome.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - the tracker's rule: MLflow never fails training
            outcome.append(f"{type(exc).__name__}: {exc}")

    if patient:  # bounded as a whole: an abandoned thread ends with the process
        thread = threading.Thread(target=create, name="mlflow-register", daemon=True)
        thread.start()
        thread.join(PATIENT_DEADLINE_S)
        if not outcome:
            why = f"MLflow did not finish the registration within {PATIENT_DEADLINE_S:.0f} s"
            return _skipped(name, path, why)
    else:
        create()
    info = outcome[0]
    if isinstance(info, str):
        return _skipped(name, path, info)
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
