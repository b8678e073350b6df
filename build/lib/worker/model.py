"""Model lifecycle: find the checkpoint, load and validate it, compile and warm
it up off the event loop, and swap in one immutable ``ServedModel`` so every
batch sees one consistent model. A bad file never replaces a good one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agent.checkpoint import CheckpointError, load_checkpoint
from agent.compile import Infer, compile_actor
from agent.contract import PairContract
from worker.retry import pause

logger = logging.getLogger(__name__)

WARMUP_BATCHES = (1, 8, 32, 128)


@dataclass(frozen=True)
class ServedModel:
    """What a batch runs: the callable and where it came from."""

    fn: Infer
    backend: str
    state_dim: int
    path: str
    mtime_utc: str
    sha256: str
    contract: PairContract
    contract_id: str  # contract.id, computed once
    metadata: dict[str, object]
    jit_error: str | None = None  # why scripting fell back to eager, when asked for jit
    fields: dict[str, str] = field(default_factory=dict)  # provenance, ready to publish

    def infer(self, rows: np.ndarray) -> np.ndarray:
        """One forward pass over a (batch, state_dim) float32 array → (batch,) actions."""
        with torch.inference_mode():
            out = self.fn(torch.from_numpy(rows))
        return out.numpy()[:, 0]


@dataclass(frozen=True)
class FileSig:
    path: str
    mtime_ns: int
    size: int
    inode: int


def _signature(path: Path) -> FileSig | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return FileSig(str(path), st.st_mtime_ns, st.st_size, st.st_ino)


def discover(model_path: Path | None, model_dir: Path) -> Path | None:
    """MODEL_PATH if given, else the newest ``*.pt`` in MODEL_DIR (hidden files skipped)."""
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
        if sig is None:
            continue
        key = (sig.mtime_ns, p.name)
        if best is None or key > best:
            best, chosen = key, p
    return chosen


def prepare(path: Path, jit: bool, state_dim: int | None = None) -> ServedModel:
    """Load, validate, compile (with an eager cross-check) and warm up. Blocking."""
    ck = load_checkpoint(path, state_dim=state_dim)
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(8, ck.state_dim, generator=gen)
    compiled = compile_actor(ck.actor, jit=jit, check_states=probe)
    with torch.inference_mode():
        for bs in WARMUP_BATCHES:
            x = torch.randn(bs, ck.state_dim, generator=gen)
            for _ in range(3):
                out = compiled.fn(x)
            if out.shape != (bs, 1) or not bool(torch.isfinite(out).all()):
                raise CheckpointError(path, f"warm-up produced {tuple(out.shape)} or non-finite actions")
    sha = ck.sha256[:16]
    fields = {
        "model_path": str(path),
        "model_mtime_utc": ck.mtime_utc,
        "model_sha256": sha,
        "backend": compiled.backend,
        "jit_compiled": "true" if compiled.jit_compiled else "false",
        "contract": ck.contract.id,
    }
    return ServedModel(
        fn=compiled.fn,
        backend=compiled.backend,
        state_dim=ck.state_dim,
        path=str(path),
        mtime_utc=ck.mtime_utc,
        sha256=sha,
        contract=ck.contract,
        contract_id=ck.contract.id,
        metadata=ck.metadata,
        jit_error=compiled.error,
        fields=fields,
    )


class ModelManager:
    """Watches the model file and keeps ``current`` pointing at a good model."""

    def __init__(self, model_path: Path | None, model_dir: Path, jit: bool) -> None:
        self.model_path = model_path
        self.model_dir = model_dir
        self.jit = jit
        self.current: ServedModel | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._attempted: FileSig | None = None
        self._lock = asyncio.Lock()
        self._warned_missing = False
        self.on_change: list[Callable[[ModelManager], None]] = []  # after each attempt (metrics)

    async def check(self, force: bool = False) -> bool:
        """Load the model if its file changed (or ``force``). True when a new model was swapped in."""
        async with self._lock:
            path = discover(self.model_path, self.model_dir)
            sig = _signature(path) if path is not None else None
            if sig is None:
                if not self._warned_missing and self.current is None:
                    where = self.model_path or f"{self.model_dir}/*.pt"
                    logger.warning("no model at %s: answering model_unavailable until one appears", where)
                    self._warned_missing = True
                return False
            if not force and sig == self._attempted:
                return False
            self._attempted = sig
            state_dim = self.current.state_dim if self.current is not None else None
            try:
                model = await asyncio.to_thread(prepare, Path(sig.path), self.jit, state_dim)
            except CheckpointError as exc:
                self.reload_failures += 1
                self.last_error = str(exc)
                kept = f"; still serving {self.current.path}" if self.current else ""
                logger.error("model load failed: %s%s", exc, kept)
                self._notify()
                return False
            except Exception as exc:
                self.reload_failures += 1
                self.last_error = f"{sig.path}: {type(exc).__name__}: {exc}"
                logger.exception("model load failed unexpectedly: %s", sig.path)
                self._notify()
                return False
            previous = self.current
            self.current = model  # one atomic reference swap
            self.reloads += 1
            self.last_error = None
            self._warned_missing = False
            logger.info(
                "%s model %s (sha %s, state_dim %d, backend %s)%s",
                "loaded" if previous is None else "reloaded",
                model.path,
                model.sha256,
                model.state_dim,
                model.backend,
                f", replacing {previous.sha256}" if previous else "",
            )
            self._notify()
            return True

    def _notify(self) -> None:
        for callback in self.on_change:
            callback(self)

    async def watch(self, interval_s: float, stop: asyncio.Event) -> None:
        """Stat the file every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            await self.check()
            await pause(stop, interval_s)
