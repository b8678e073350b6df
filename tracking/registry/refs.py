"""What the registry speaks of: a model URI (``models:/<name>@<alias>`` or
``models:/<name>/<version>``), a registered version and the tags statpair records
on it, and the errors a registry call can end in. No mlflow here."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Tags recorded on each version at registration (tracking.registry.register).
TAG_SHA256 = "sha256"  # of the checkpoint file: a worker checks its download against it
TAG_CHECKPOINT = "checkpoint"  # the checkpoint's file name inside the version's artifact folder
TAG_CONTRACT = "contract_id"  # the pair contract the model was trained for
# The one verdict on the model (agent.verdict), as its training run printed it: promotion
# reads it, and serves only what it says to serve.
TAG_VERDICT = "verdict"
SERVE = "verdict: serve"
VAL_SHARPE = "val_sharpe"  # the model's Sharpe on the validation paths (checkpoint selection)
VAL_ZSCORE = "val_zscore_sharpe"  # the z-score rule's Sharpe on the same validation paths
TEST_SHARPE = "test_sharpe"  # the model's Sharpe on held-out paths
TEST_ZSCORE = "test_zscore_sharpe"  # the z-score rule's Sharpe on the same held-out paths
# On the registered model: the versions an alias pointed to, oldest first (JSON list).
HISTORY_TAG = "alias_history.{alias}"

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALIAS_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
URI_FORMS = "models:/<name>@<alias> or models:/<name>/<version>, e.g. models:/statpair-policy@champion"


class RegistryError(Exception):
    """A registry answer the caller cannot use; the message is one sentence."""


class RegistryUnavailable(RegistryError):
    """The registry or its artifact store did not answer (down, unreachable, too slow, 5xx)."""


class NotFound(RegistryError):
    """The registry answered: no such registered model, version or alias."""


def check_name(name: str) -> str:
    """A registered model name statpair accepts (it is also a folder name in the cache)."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(
            f"model name {name!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    """MLflow's alias rules: letters, digits, '_' and '-'; not 'latest'; not v<digits> (a version)."""
    if not ALIAS_RE.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(
            f"alias {alias!r} must be letters, digits, '_' or '-', and neither 'latest' nor v<number>"
        )
    return alias


@dataclass(frozen=True)
class ModelRef:
    """A registered model and either an alias (which moves) or a pinned version."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_uri(uri: str) -> ModelRef:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>``; ValueError in one sentence."""
    text = uri.strip()
    if not text.startswith("models:/"):
        raise ValueError(f"must be {URI_FORMS}")
    rest = text.removeprefix("models:/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return ModelRef(check_name(name), alias=check_alias(alias))
        name, slash, version = rest.partition("/")
        if not slash or not version.isdigit() or int(version) < 1:
            raise ValueError(f"must be {URI_FORMS}")
        return ModelRef(check_name(name), version=int(version))
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("must be") else f"{msg} (in {text!r})") from None


def score(tags: Mapping[str, str], key: str) -> float | None:
    """A finite score recorded as a tag, or None when absent or not a number."""
    try:
        value = float(tags[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as the registry describes it."""

    name: str
    version: int
    status: str  # READY, PENDING_REGISTRATION or FAILED_REGISTRATION
    source: str  # the artifact folder the version was registered from
    run_id: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    created_ms: int = 0

    @property
    def sha256(self) -> str | None:
        return self.tags.get(TAG_SHA256)

    @property
    def checkpoint(self) -> str | None:
        return self.tags.get(TAG_CHECKPOINT)

    def score(self, key: str) -> float | None:
        return score(self.tags, key)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "source": self.source,
            "run_id": self.run_id,
            "tags": dict(self.tags),
            "aliases": list(self.aliases),
            "created_ms": self.created_ms,
        }

    @classmethod
    def from_mlflow(cls, mv: Any) -> VersionInfo:
        """From mlflow's ``ModelVersion`` entity."""
        return cls(
            name=str(mv.name),
            version=int(mv.version),
            status=str(mv.status),
            source=str(mv.source),
            run_id=str(mv.run_id) if mv.run_id else None,
            tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
            aliases=tuple(str(a) for a in (getattr(mv, "aliases", None) or ())),
            created_ms=int(mv.creation_timestamp or 0),
        )


@dataclass(frozen=True)
class Move:
    """What a promotion or a rollback did to an alias."""

    name: str
    alias: str
    before: int | None  # the version the alias pointed to (None: it was not set)
    after: int

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        was = f"version {self.before}" if self.before is not None else "unset"
        if not self.changed:
            return f"{self.name}@{self.alias} already points to version {self.after}: nothing moved"
        return f"{self.name}@{self.alias}: {was} → version {self.after}"
