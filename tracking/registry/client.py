"""``Registry``: the calls statpair makes to MLflow's model registry, each
translated into one of three outcomes a caller can act on (an answer,
``NotFound``, ``RegistryUnavailable``) and bounded by MLflow's HTTP settings,
which are tightened unless the user set them. mlflow is imported when a
``Registry`` is built, never before."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tracking.http import bound_http
from tracking.registry.cache import file_sha256
from tracking.registry.refs import (
    HISTORY_TAG,
    SERVE,
    TAG_CHECKPOINT,
    TAG_SHA256,
    TAG_VERDICT,
    ModelRef,
    Move,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    VersionInfo,
    check_alias,
    check_name,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

ARTIFACT_DIR = "registered-model"  # in the run: registered-model/<sha256[:12]>/<checkpoint>
HISTORY_KEEP = 100  # alias history entries kept in the tag
MAX_VERSIONS_LISTED = 1000


class Registry:
    """A client of one MLflow server's model registry."""

    def __init__(self, tracking_uri: str, *, timeout_s: float = 5.0, max_retries: int = 2) -> None:
        self.tracking_uri = tracking_uri
        self._password = urlsplit(tracking_uri).password if "://" in tracking_uri else None
        bound_http(timeout_s, max_retries)
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise RegistryError(
                "the model registry needs MLflow's client: pip install mlflow-skinny (or mlflow)"
            ) from None
        self._client: Any = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- reading ---------------------------------------------------------------------------

    def resolve(self, ref: ModelRef) -> VersionInfo:
        """The version an alias points to now (one small GET), or the pinned version."""
        if ref.alias is not None:
            mv = self._call(f"resolving {ref}", self._client.get_model_version_by_alias, ref.name, ref.alias)
            return VersionInfo.from_mlflow(mv)
        assert ref.version is not None
        return self.version(ref.name, ref.version)

    def version(self, name: str, version: int) -> VersionInfo:
        mv = self._call(
            f"reading version {version} of {name}", self._client.get_model_version, name, str(version)
        )
        return VersionInfo.from_mlflow(mv)

    def aliases(self, name: str) -> dict[str, int]:
        rm = self._call(f"reading {name}", self._client.get_registered_model, name)
        return {str(a): int(v) for a, v in (rm.aliases or {}).items()}

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, newest first, with its aliases."""
        check_name(name)
        aliases = self.aliases(name)  # NotFound when the model is not registered
        found = self._call(
            f"listing versions of {name}",
            self._client.search_model_versions,
            f"name='{name}'",
            max_results=MAX_VERSIONS_LISTED,
        )
        out = []
        for mv in found:
            info = VersionInfo.from_mlflow(mv)
            held = tuple(sorted(a for a, v in aliases.items() if v == info.version))
            out.append(VersionInfo(**{**info.__dict__, "aliases": held}))
        return sorted(out, key=lambda i: i.version, reverse=True)

    def history(self, name: str, alias: str) -> list[int]:
        """The versions ``alias`` pointed to, oldest first, as promote and rollback recorded them."""
        rm = self._call(f"reading {name}", self._client.get_registered_model, name)
        return _parse_history((rm.tags or {}).get(HISTORY_TAG.format(alias=alias)))

    def download(self, info: VersionInfo, dest: Path) -> Path:
        """Download the version's artifact folder into ``dest``; the local folder."""
        from mlflow.artifacts import download_artifacts

        dest.mkdir(parents=True, exist_ok=True)
        local = self._call(
            f"downloading version {info.version} of {info.name}",
            download_artifacts,
            artifact_uri=info.source,
            dst_path=str(dest),
            tracking_uri=self.tracking_uri,
        )
        return Path(local)

    # -- writing ---------------------------------------------------------------------------

    def create_version(
        self, name: str, checkpoint: Path, run_id: str, tags: Mapping[str, str], await_s: int = 60
    ) -> VersionInfo:
        """Upload ``checkpoint`` to the run (in a folder named by its hash, so a
        version's files never change) and register that folder as a new version of
        ``name`` with ``tags`` and its sha256 (on MLflow 3 a plain file needs
        create_registered_model + create_model_version; register_model wants an
        MLmodel file)."""
        check_name(name)
        sha = file_sha256(checkpoint)
        folder = f"{ARTIFACT_DIR}/{sha[:12]}"
        c = self._client
        self._call("uploading the checkpoint", c.log_artifact, run_id, str(checkpoint), folder)
        run = self._call(f"reading run {run_id}", c.get_run, run_id)
        source = f"{str(run.info.artifact_uri).rstrip('/')}/{folder}"
        try:
            self._call(f"creating {name}", c.create_registered_model, name)
        except RegistryError as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        all_tags = {
            **{str(k): str(v) for k, v in tags.items()},
            TAG_SHA256: sha,
            TAG_CHECKPOINT: checkpoint.name,
        }
        mv = self._call(
            f"creating a version of {name}",
            c.create_model_version,
            name,
            source=source,
            run_id=run_id,
            tags=all_tags,
            await_creation_for=await_s,
        )
        return VersionInfo.from_mlflow(mv)

    def promote(self, name: str, version: int, alias: str, *, force: bool = False) -> Move:
        """Point ``alias`` at ``version``: refused unless its recorded verdict says serve
        (``guard``), or ``force``."""
        check_alias(alias)
        info = self.version(name, version)
        if info.status != "READY":
            raise RegistryError(f"version {version} of {name} is {info.status}, not READY")
        if not force:
            guard(info)
        before = self.aliases(name).get(alias)
        history = self.history(name, alias)
        if before is not None and (not history or history[-1] != before):
            history.append(before)  # moved by hand (the MLflow UI): remember where it was
        if before == version:
            return Move(name, alias, before, version)
        self._call(
            f"moving {name}@{alias}", self._client.set_registered_model_alias, name, alias, str(version)
        )
        self._save_history(name, alias, [*history, version])
        return Move(name, alias, before, version)

    def rollback(self, name: str, alias: str) -> Move:
        """Point ``alias`` back at the version it pointed to before the current one."""
        check_alias(alias)
        current = self.aliases(name).get(alias)
        if current is None:
            raise RegistryError(f"{name}@{alias} is not set: there is nothing to roll back")
        history = self.history(name, alias)
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError(f"{name}@{alias} has no earlier version in its history to roll back to")
        target = history[-1]
        self._call(
            f"moving {name}@{alias}", self._client.set_registered_model_alias, name, alias, str(target)
        )
        self._save_history(name, alias, history)
        return Move(name, alias, current, target)

    def _save_history(self, name: str, alias: str, history: list[int]) -> None:
        value = json.dumps(history[-HISTORY_KEEP:])
        key = HISTORY_TAG.format(alias=alias)
        self._call(
            f"recording {name}@{alias}'s history", self._client.set_registered_model_tag, name, key, value
        )

    # -- errors ----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RegistryError:
            raise
        except Exception as exc:  # translated into the outcomes callers handle
            raise self._translate(what, exc) from exc

    def _translate(self, what: str, exc: Exception) -> RegistryError:
        from mlflow.exceptions import MlflowException, RestException

        full = str(exc).strip() or type(exc).__name__
        if self._password:
            full = full.replace(self._password, "***")
        text = full.splitlines()[0][:300]
        if isinstance(exc, RestException):
            rest: Any = exc  # mlflow's exceptions are unannotated
            status, code = int(rest.get_http_status_code()), str(rest.error_code)
            if code == "RESOURCE_DOES_NOT_EXIST" or (
                code == "INVALID_PARAMETER_VALUE" and "not found" in text
            ):
                return NotFound(f"{what}: {text}")
            if status >= 500:
                return RegistryUnavailable(f"{what}: the registry answered HTTP {status}: {text}")
            return RegistryError(f"{what}: {text}")
        if isinstance(exc, MlflowException | OSError) or type(exc).__module__.startswith(
            ("requests", "urllib3")
        ):
            return RegistryUnavailable(f"{what}: {_short(full, text)}")
        return RegistryError(f"{what}: {type(exc).__name__}: {text}")


def guard(info: VersionInfo) -> None:
    """The promotion rule: the verdict recorded with the version (agent.verdict, the line its
    training run printed, which agent.evaluate prints too) says serve."""
    said = (info.tags.get(TAG_VERDICT) or "").strip()
    if not said:
        raise RegistryError(
            f"version {info.version} of {info.name} has no verdict recorded ({TAG_VERDICT} tag: registered "
            "by hand or by an older statpair) to judge it by: refusing (--force promotes it anyway)"
        )
    if said != SERVE:
        raise RegistryError(
            f"version {info.version} of {info.name}: {said}: refusing (--force promotes it anyway)"
        )


def _parse_history(text: str | None) -> list[int]:
    try:
        values = json.loads(text) if text else []
        return [int(v) for v in values]
    except (ValueError, TypeError):
        logger.warning("ignoring an unreadable alias history tag: %.80r", text)
        return []


def _short(full: str, text: str) -> str:
    """MLflow's 'API request to URL failed with exception HTTPConnectionPool(...): Max
    retries exceeded ... Connection refused' as 'Connection refused (URL)'."""
    url = full.removeprefix("API request to ").split(" failed with exception", 1)[0]
    for marker in ("Connection refused", "Read timed out", "timed out", "Name or service not known"):
        if marker in full and url != full:
            return f"{marker} ({url.split('?', 1)[0]})"
    return text
