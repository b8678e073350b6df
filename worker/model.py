"""Model lifecycle: ask the model source what to serve (a folder by default, or
the MLflow registry: worker/registry_source.py), load and validate it, compile
and warm it up off the event loop, and swap in one immutable ``ServedModel`` so
every batch sees one consistent model. A bad file never replaces a good one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from agent.checkpoint import CheckpointError, load_checkpoint
from agent.compile import Infer, compile_actor
from agent.contract import PairContract
from worker.retry import pause
from worker.sources import Candidate, FolderSource, ModelSource, SourceError

if TYPE_CHECKING:
    from worker.settings import Settings

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
    # Where it came from: source (folder, registry), and for the registry its
    # uri, name, version and MLflow run id (status and metrics show these).
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        """The registry version, when the model came from the registry."""
        return self.provenance.get("version")

    @property
    def run_id(self) -> str | None:
        """The MLflow run that trained it: the registry's word, else the checkpoint's."""
        run = self.provenance.get("run_id") or self.metadata.get("run_id")
        return str(run) if run else None

    def infer(self, rows: np.ndarray) -> np.ndarray:
        """One forward pass over a (batch, state_dim) float32 array → (batch,) actions."""
        with torch.inference_mode():
            out = self.fn(torch.from_numpy(rows))
        return out.numpy()[:, 0]


def prepare(
    path: Path,
    jit: bool,
    state_dim: int | None = None,
    *,
    sha256: str | None = None,
    provenance: dict[str, str] | None = None,
) -> ServedModel:
    """Load, validate (against ``sha256`` too, when the source knows it), compile
    (with an eager cross-check) and warm up. Blocking."""
    ck = load_checkpoint(path, state_dim=state_dim)
    if sha256 is not None and ck.sha256 != sha256:
        raise CheckpointError(path, f"sha256 {ck.sha256[:12]}… is not the {sha256[:12]}… its source recorded")
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
    provenance = dict(provenance or {"source": "folder"})
    if provenance.get("version"):
        fields["model_version"] = provenance["version"]
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
        provenance=provenance,
    )


FALLBACKS = 4  # candidates tried in one check while nothing is served


class ModelManager:
    """Asks its source what to serve and keeps ``current`` pointing at a good model."""

    def __init__(
        self, model_path: Path | None, model_dir: Path, jit: bool, *, source: ModelSource | None = None
    ) -> None:
        self.source: ModelSource = source or FolderSource(model_path, model_dir)
        self.jit = jit
        self.current: ServedModel | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._attempted: Hashable | None = None
        self._lock = asyncio.Lock()
        self._warned_missing = False
        self._warned_gone = False  # the served model's file is gone from the folder: said once
        self._attempted_failed = False  # the last check tried a candidate and it failed to load
        self._served_key: Hashable | None = None  # the candidate ``current`` came from
        # A rule a loaded model must pass to replace the current one (the reason it fails, or None).
        self.admit: Callable[[ServedModel, ServedModel | None], str | None] | None = None
        self.on_change: list[Callable[[ModelManager], None]] = []  # after each attempt (metrics)

    @classmethod
    def from_settings(cls, s: Settings) -> ModelManager:
        """The folder source, or the registry's with MODEL_URI (imported only then)."""
        if s.model_uri:
            from worker.registry_source import RegistrySource

            return cls(s.model_path, s.model_dir, s.jit, source=RegistrySource.from_settings(s))
        return cls(s.model_path, s.model_dir, s.jit)

    async def check(self, force: bool = False) -> bool:
        """Load what the source offers if it changed (or ``force``). True when a new model was
        swapped in. With nothing served yet, a candidate that fails to load is followed at once
        by the next one the source offers (a folder's next-newest file), a few at most."""
        async with self._lock:
            passed_over: str | None = None
            for attempt in range(FALLBACKS):
                swapped = await self._check_once(force and attempt == 0)
                if self._attempted_failed:
                    passed_over = passed_over or self.last_error
                if swapped or self.current is not None or not self._attempted_failed:
                    if swapped and passed_over and self.current is not None:
                        # Still worth seeing: the newest file is broken, an older one serves.
                        self.last_error = f"{passed_over} (passed over: serving {self.current.path})"
                        self._notify()
                    return swapped
            return False

    async def _check_once(self, force: bool) -> bool:
        """One look at the source: load and swap in its candidate if it is new."""
        self._attempted_failed = False
        try:
            candidate = await self.source.poll(force)
        except SourceError as exc:
            logger.error("model update failed: %s%s", exc, self._kept())
            self._failed(str(exc))
            return False
        if candidate is None:
            if not self._warned_missing and self.current is None:
                logger.warning(
                    "no usable model at %s yet: states get model_unavailable until one appears "
                    "(or are left to a live worker that has one)",
                    self.source.describe(),
                )
                self._warned_missing = True
            elif self.current is not None and not self._warned_gone and self.source.kind == "folder":
                logger.warning(
                    "no loadable model file at %s any more (removed, or only files that failed to load): "
                    "still serving the model loaded from %s (sha %s)",
                    self.source.describe(),
                    self.current.path,
                    self.current.sha256,
                )
                self._warned_gone = True
            return False
        self._warned_gone = False
        if not force and candidate.key in (self._attempted, self._served_key):
            return False
        self._attempted = candidate.key
        state_dim = self.current.state_dim if self.current is not None else None
        try:
            model = await asyncio.to_thread(
                prepare,
                candidate.path,
                self.jit,
                state_dim,
                sha256=candidate.sha256,
                provenance=candidate.provenance,
            )
        except CheckpointError as exc:
            logger.error("model load failed: %s%s", exc, self._kept())
            self._failed(str(exc), candidate)
            self._attempted_failed = True
            return False
        except Exception as exc:
            logger.exception("model load failed unexpectedly: %s", candidate.path)
            self._failed(f"{candidate.path}: {type(exc).__name__}: {exc}", candidate)
            self._attempted_failed = True
            return False
        refusal = self.admit(model, self.current) if self.admit is not None else None
        if refusal is not None:
            logger.error("model %s not swapped in: %s%s", candidate.path, refusal, self._kept())
            self._failed(f"{candidate.path}: {refusal}", candidate)
            self._attempted_failed = True
            return False
        previous = self.current
        self.current = model  # one atomic reference swap
        self._served_key = candidate.key
        self.reloads += 1
        self.last_error = None
        self._warned_missing = False
        self.source.accepted(candidate)
        origin = ""
        if model.version:
            p = model.provenance
            run = p.get("run_id") or "?"
            origin = f" ({p.get('name')} version {model.version} of {p.get('uri')}, run {run})"
        logger.info(
            "%s model %s%s (sha %s, state_dim %d, backend %s)%s",
            "loaded" if previous is None else "reloaded",
            model.path,
            origin,
            model.sha256,
            model.state_dim,
            model.backend,
            f", replacing {_name(previous)}" if previous else "",
        )
        self._notify()
        return True

    def _failed(self, error: str, candidate: Candidate | None = None) -> None:
        self.reload_failures += 1
        self.last_error = error
        if candidate is not None:
            self.source.rejected(candidate, error)
        self._notify()

    def _kept(self) -> str:
        return f"; still serving {_name(self.current)}" if self.current else ""

    def _notify(self) -> None:
        for callback in self.on_change:
            callback(self)

    async def watch(self, interval_s: float, stop: asyncio.Event) -> None:
        """Ask the source every ``interval_s`` until ``stop`` is set (a registry
        source talks to the registry only every REGISTRY_POLL_S of these)."""
        while not stop.is_set():
            await self.check()
            await pause(stop, interval_s)


def _name(model: ServedModel | None) -> str:
    if model is None:
        return "nothing"
    if model.version:
        return f"version {model.version} (sha {model.sha256})"
    return f"{model.path} (sha {model.sha256})"
