"""The checkpoint format: one file with the actor's weights, its config, its pair
contract (what a strategy must compute to use it) and metadata. Saving is atomic
(temp file, fsync, ``os.replace``); loading is ``weights_only`` and validates
everything before an actor is returned."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from agent.actor import LOG_STD_MAX, LOG_STD_MIN, SACActor
from agent.contract import CHECKPOINT_KEY, MAX_CHECKPOINT_BYTES, ContractError, PairContract

FORMAT = "statpair.sac_actor"
VERSION = 2  # 2: carries the pair contract (feature set 2); 1 had neither


class CheckpointError(Exception):
    """A file that cannot be served: names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Checkpoint:
    """A validated, loaded checkpoint."""

    actor: SACActor
    path: str
    contract: PairContract
    metadata: dict[str, Any]
    sha256: str
    mtime: float
    size: int

    @property
    def state_dim(self) -> int:
        return self.actor.state_dim

    @property
    def mtime_utc(self) -> str:
        return datetime.fromtimestamp(self.mtime, tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class Metadata:
    """What a checkpoint says about where it came from."""

    created_utc: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    run_id: str | None = None
    episodes: int | None = None
    eval_score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"created_utc": self.created_utc}
        for key in ("run_id", "episodes", "eval_score"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


def save_checkpoint(
    actor: SACActor,
    path: str | os.PathLike[str],
    metadata: Metadata | dict[str, Any] | None = None,
    *,
    contract: PairContract,
) -> Path:
    """Write ``actor`` and its ``contract`` to ``path`` atomically: a reader sees the
    old file or the new one. (That the two fit is checked when the file is loaded.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata.as_dict() if isinstance(metadata, Metadata) else dict(metadata or Metadata().as_dict())
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": actor.config(),
        CHECKPOINT_KEY: contract.to_json(),
        "metadata": meta,
        "state_dict": {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()},
    }
    # The temp name starts with "." and does not end in ".pt", so a worker
    # scanning the folder for *.pt never picks up a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes it owner-only (0600): a worker running as another user on a shared
        # MODEL_DIR could not read it. Give it the mode the file had, or a new file's.
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _mode_for(path: Path) -> int:
    """The permission bits ``path`` has (a replaced checkpoint keeps them), or those a new
    file gets under this process's umask (0644 under the usual 022)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(
    path: str | os.PathLike[str],
    state_dim: int | None = None,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> Checkpoint:
    """Load and validate a checkpoint; raise ``CheckpointError`` naming the reason.

    The file is read once into memory so the hash, the size and the weights all
    describe the same bytes even if the file is replaced meanwhile.
    """
    path = Path(path)
    try:
        st = path.stat()
        if st.st_size > max_bytes:
            raise CheckpointError(path, f"file is {st.st_size} bytes, over the {max_bytes}-byte limit")
        data = path.read_bytes()
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise CheckpointError(path, "file is empty")
    payload = _torch_load(path, data)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, f"not a {FORMAT} checkpoint")
    version = payload.get("version")
    if version == 1:
        raise CheckpointError(
            path,
            "checkpoint format 1 predates the pair contract and feature set 2 that this version of "
            "statpair serves: retrain the model with python -m agent.train",
        )
    if version != VERSION:
        raise CheckpointError(
            path, f"unsupported checkpoint version {version!r} (this statpair reads {VERSION})"
        )
    actor = _build_actor(path, payload)
    if state_dim is not None and actor.state_dim != state_dim:
        raise CheckpointError(path, f"model state_dim is {actor.state_dim}, expected {state_dim}")
    contract = _contract(path, payload, actor.state_dim)
    metadata = payload.get("metadata")
    return Checkpoint(
        actor=actor,
        path=str(path),
        contract=contract,
        metadata=dict(metadata) if isinstance(metadata, dict) else {},
        sha256=file_sha256(data),
        mtime=st.st_mtime,
        size=len(data),
    )


def _torch_load(path: Path, data: bytes) -> Any:
    """``torch.load`` with ``weights_only``, its failures said plainly. (torch's own
    message for a file it will not load that way suggests ``weights_only=False``,
    which would run whatever code the file holds: never the fix for a checkpoint.)"""
    unreadable = "not a readable checkpoint"
    if not zipfile.is_zipfile(io.BytesIO(data)):
        if data.startswith(b"PK\x03\x04"):
            raise CheckpointError(path, f"{unreadable}: a zip archive cut short (truncated or corrupt?)")
        raise CheckpointError(
            path,
            f"{unreadable}: not a torch zip archive, so not a statpair checkpoint "
            f"(it starts with {data[:8]!r})",
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what the weights-only unpickler refuses
        # from None: torch's message (the cause) tells the reader to load it with
        # weights_only=False, which runs any code the file holds.
        raise CheckpointError(
            path,
            f"{unreadable}: it holds objects that a weights_only load refuses, so not a statpair "
            f"checkpoint ({_refused(str(exc))})",
        ) from None
    except Exception as exc:
        raise CheckpointError(
            path, f"{unreadable}: a zip archive torch cannot read (truncated or corrupt?): {_first(exc)}"
        ) from exc


def _refused(message: str) -> str:
    """What torch's weights-only unpickler refused, out of its long message."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()] if found else []
    return lines[0].split(". ")[0][:200] if lines else "its unpickler gave no reason"


def _first(exc: Exception) -> str:
    """The first sentence of a torch error, without its C++ source location."""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(exc).strip())
    return text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__


def _contract(path: Path, payload: dict[str, Any], state_dim: int) -> PairContract:
    text = payload.get(CHECKPOINT_KEY)
    if not isinstance(text, str):
        raise CheckpointError(path, "checkpoint has no pair contract")
    try:
        contract = PairContract.from_json(text, source="its contract")
    except ContractError as exc:
        raise CheckpointError(path, str(exc)) from None
    if len(contract.features.names) != state_dim:
        features = len(contract.features.names)
        raise CheckpointError(
            path, f"the actor takes {state_dim} values but its contract's feature set has {features}"
        )
    return contract


def _build_actor(path: Path, payload: dict[str, Any]) -> SACActor:
    config = payload.get("config")
    state_dict = payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state_dict, dict):
        raise CheckpointError(path, "checkpoint has no config or no state_dict")
    try:
        actor = SACActor(
            state_dim=int(config["state_dim"]),
            hidden=tuple(int(h) for h in config["hidden"]),
            action_dim=int(config.get("action_dim", 1)),
            log_std_min=float(config.get("log_std_min", LOG_STD_MIN)),
            log_std_max=float(config.get("log_std_max", LOG_STD_MAX)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"invalid actor config: {exc}") from exc
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(path, f"weight {name!r} is not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(path, f"weight {name!r} has non-finite values")
    try:
        actor.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            path, f"weights do not fit the config: {str(exc).splitlines()[0][:200]}"
        ) from exc
    actor.eval()
    return actor
