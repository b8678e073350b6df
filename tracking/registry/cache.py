"""The local copy of registered versions a worker serves from:
``<cache>/<name>/<version>/`` holds the checkpoint and ``version.json`` (what the
registry said about it). A version appears there only whole and verified: it is
downloaded into a temporary folder beside it, checked against the sha256
recorded at registration, then renamed into place. No mlflow here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracking.registry.refs import TAG_CHECKPOINT, RegistryError, VersionInfo, check_name

logger = logging.getLogger(__name__)

META = "version.json"
REJECTED = "rejected.txt"  # written when a worker could not serve this version
STALE_TMP_S = 3600.0  # a temporary folder this old belongs to a download that died


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Cached:
    """A verified version in the cache."""

    name: str
    version: int
    path: Path  # the checkpoint file
    sha256: str
    run_id: str | None
    meta: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def rejected(self) -> str | None:
        """Why a worker could not serve it, if one could not."""
        try:
            return (self.folder / REJECTED).read_text().strip() or "rejected"
        except OSError:
            return None


def version_dir(cache_dir: Path, name: str, version: int) -> Path:
    return cache_dir / check_name(name) / str(version)


def read(cache_dir: Path, name: str, version: int) -> Cached | None:
    """The cached version, or None when it is not (wholly) there."""
    folder = version_dir(cache_dir, name, version)
    try:
        meta = json.loads((folder / META).read_text())
        path = folder / str(meta["checkpoint"])
        if not path.is_file() or path.parent != folder:
            return None
        return Cached(name, version, path, str(meta["sha256"]), meta.get("run_id"), meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_versions(cache_dir: Path, name: str) -> list[Cached]:
    """Every whole version of ``name`` in the cache, newest (highest) first."""
    try:
        folders = [p for p in (cache_dir / check_name(name)).iterdir() if p.name.isdigit()]
    except OSError:
        return []
    found = (read(cache_dir, name, int(p.name)) for p in folders)
    return sorted((c for c in found if c is not None), key=lambda c: c.version, reverse=True)


def _checkpoint_name(info: VersionInfo, downloaded: Path) -> str:
    named = info.checkpoint
    if named is not None:
        if "/" in named or "\\" in named or named in ("", ".", "..") or named.startswith("."):
            raise RegistryError(f"version {info.version} of {info.name} names checkpoint {named!r}")
        return named
    found = sorted(p.name for p in downloaded.iterdir() if p.is_file() and p.suffix == ".pt")
    if len(found) != 1:
        raise RegistryError(
            f"version {info.version} of {info.name} has {len(found)} .pt files and no {TAG_CHECKPOINT!r} tag"
        )
    return found[0]


def install(cache_dir: Path, info: VersionInfo, fetch: Callable[[Path], Path]) -> Cached:
    """The version from the cache, else ``fetch(temp_dir)`` (which downloads the
    version's artifact folder under ``temp_dir`` and returns that folder), checked
    against the ``sha256`` tag and renamed into place. RegistryError when the
    version has no sha256 tag or the download does not match it."""
    have = read(cache_dir, info.name, info.version)
    if have is not None and have.sha256 == info.sha256:
        return have
    if not info.sha256:
        raise RegistryError(
            f"version {info.version} of {info.name} has no sha256 tag: it was not registered by statpair "
            "(python -m agent.train --register), so its download cannot be checked"
        )
    parent = cache_dir / check_name(info.name)
    parent.mkdir(parents=True, exist_ok=True)
    _sweep(parent)
    tmp = parent / f".tmp-{info.version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        downloaded = fetch(tmp / "download")
        name = _checkpoint_name(info, downloaded)
        source = downloaded / name
        if not source.is_file():
            raise RegistryError(f"version {info.version} of {info.name} has no file {name!r}")
        got = file_sha256(source)
        if got != info.sha256:
            raise RegistryError(
                f"version {info.version} of {info.name}: the download's sha256 {got[:12]}… does not match "
                f"the {info.sha256[:12]}… recorded at registration"
            )
        os.replace(source, tmp / name)
        shutil.rmtree(tmp / "download", ignore_errors=True)
        meta = {**info.as_json(), "checkpoint": name, "sha256": got, "downloaded_utc": _now()}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        final = version_dir(cache_dir, info.name, info.version)
        if final.exists():  # an older, different copy (or a peer on this host won the race)
            other = read(cache_dir, info.name, info.version)
            if other is not None and other.sha256 == got:
                return other
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            other = read(cache_dir, info.name, info.version)
            if other is None or other.sha256 != got:
                raise
            return other
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    cached = read(cache_dir, info.name, info.version)
    if cached is None:
        raise RegistryError(f"version {info.version} of {info.name} vanished from {final} after download")
    return cached


def mark_rejected(entry: Cached, reason: str) -> None:
    """Remember across restarts that this version could not be served (best effort)."""
    with contextlib.suppress(OSError):
        (entry.folder / REJECTED).write_text(reason[:2000] + "\n")


def prune(cache_dir: Path, name: str, keep: set[int], newest: int = 5) -> list[int]:
    """Remove all but the ``newest`` versions and those in ``keep``; the versions removed."""
    removed = []
    for entry in cached_versions(cache_dir, name)[newest:]:
        if entry.version not in keep:
            shutil.rmtree(entry.folder, ignore_errors=True)
            removed.append(entry.version)
    return removed


def _sweep(parent: Path) -> None:
    """Remove temporary folders left by downloads that died (not those in progress)."""
    now = time.time()
    for tmp in parent.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
