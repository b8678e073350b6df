"""The MLflow model registry as statpair's model source: register a checkpoint
as a version, promote and roll back an alias (``python -m tracking.registry``),
resolve an alias and download a pinned version into a local cache. Imports
nothing of the project; mlflow only when a ``Registry`` is built."""

from tracking.registry.cache import Cached, cached_versions, install, mark_rejected, prune
from tracking.registry.client import Registry, bound_http, guard
from tracking.registry.refs import (
    TAG_CONTRACT,
    TAG_SHA256,
    TEST_SHARPE,
    TEST_ZSCORE,
    VAL_SHARPE,
    VAL_ZSCORE,
    ModelRef,
    Move,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    VersionInfo,
    check_alias,
    check_name,
    parse_uri,
)
from tracking.registry.register import Registered, register

__all__ = [
    "TAG_CONTRACT",
    "TAG_SHA256",
    "TEST_SHARPE",
    "TEST_ZSCORE",
    "VAL_SHARPE",
    "VAL_ZSCORE",
    "Cached",
    "ModelRef",
    "Move",
    "NotFound",
    "Registered",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "VersionInfo",
    "bound_http",
    "cached_versions",
    "check_alias",
    "check_name",
    "guard",
    "install",
    "mark_rejected",
    "parse_uri",
    "prune",
    "register",
]
