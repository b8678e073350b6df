"""Where models come from: a source answers what to serve now (a local checkpoint
and its provenance) and hears how its offer went. The folder source (MODEL_PATH /
MODEL_DIR) is here; the registry's is worker/registry_source.py."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class FileSig:
    path: str
    mtime_ns: int
    size: int
    inode: int


MAX_PASSED_OVER = 256  # broken files remembered per folder (the oldest forgotten first)


def _signature(path: Path) -> FileSig | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return FileSig(str(path), st.st_mtime_ns, st.st_size, st.st_ino)


def discover(model_path: Path | None, model_dir: Path, skip: Collection[FileSig] = ()) -> Path | None:
    """MODEL_PATH if given, else the newest ``*.pt`` in MODEL_DIR (hidden files skipped, and
    the files whose signature is in ``skip``)."""
    if model_path is not None:
        return model_path
    try:
        candidates = [p for p in model_dir.glob("*.pt") if not p.name.startswith(".") and p.is_file()]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    chosen = None
    for p in candidates:
        sig = _signature(p)
        if sig is None or sig in skip:
            continue
        key = (sig.mtime_ns, p.name)
        if best is None or key > best:
            best, chosen = key, p
    return chosen


@dataclass(frozen=True)
class Candidate:
    """What a source says to serve now: a local checkpoint and where it came from."""

    path: Path
    key: Hashable  # equal keys: the same thing, not loaded again (unless forced)
    provenance: dict[str, str]
    sha256: str | None = None  # the full hash the file must have, when the source knows it


class SourceError(Exception):
    """What a source offers cannot be served (e.g. its download does not match its
    recorded sha256); one sentence. The model being served stays."""


class ModelSource(Protocol):
    """Where models come from. ``poll`` answers what to serve now (None: nothing
    yet); the manager tells the source how its offer went."""

    kind: str

    def describe(self) -> str: ...

    async def poll(self, force: bool = False) -> Candidate | None: ...

    def accepted(self, candidate: Candidate) -> None: ...

    def rejected(self, candidate: Candidate, reason: str) -> None: ...

    def status(self) -> dict[str, Any]: ...


class FolderSource:
    """MODEL_PATH, else the newest ``*.pt`` in MODEL_DIR; a file is the same while
    its path, mtime, size and inode are."""

    kind = "folder"

    def __init__(self, model_path: Path | None, model_dir: Path) -> None:
        self.model_path = model_path
        self.model_dir = model_dir
        # Files that failed to load are passed over (until they change, or a forced reload),
        # so a broken newest file cannot leave the folder unserved when an older one is good
        # (a worker restarted with it), nor be loaded again at every look. A broken new file
        # is refused and the served model stays.
        self._failed: dict[FileSig, None] = {}  # insertion-ordered: the oldest forgotten first

    def describe(self) -> str:
        return str(self.model_path or f"{self.model_dir}/*.pt")

    async def poll(self, force: bool = False) -> Candidate | None:
        if force:
            self._failed.clear()
        path = discover(self.model_path, self.model_dir, self._failed)
        sig = _signature(path) if path is not None else None
        if sig is None:
            return None
        return Candidate(Path(sig.path), sig, {"source": "folder"})

    def accepted(self, candidate: Candidate) -> None:
        pass

    def rejected(self, candidate: Candidate, reason: str) -> None:
        if isinstance(candidate.key, FileSig) and self.model_path is None:
            self._failed[candidate.key] = None
            while len(self._failed) > MAX_PASSED_OVER:
                del self._failed[next(iter(self._failed))]

    def status(self) -> dict[str, Any]:
        if self.model_path is not None:
            return {"kind": self.kind, "model_path": str(self.model_path)}
        return {"kind": self.kind, "model_dir": str(self.model_dir)}
