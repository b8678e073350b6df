"""The models a worker serves: the default model (MODEL_PATH / MODEL_DIR /
MODEL_URI, as ever), one model per pair, and challengers; and the routing of an
entry's ``pair`` to its model. Each model has its own source and hot-reloads
and swaps on its own (worker/model.py); a bad file for one pair never affects
another.

Where they come from:
- per-pair models: every subfolder of ``MODEL_DIR/pairs/`` (its newest ``*.pt``)
  and every URI of PAIR_MODEL_URIS; the pair a model serves is the one its
  contract names (``KO/PEP``);
- challengers: every subfolder of ``MODEL_DIR/challengers/`` and every URI of
  CHALLENGER_URIS; one shadows the pair its contract names, or, without a
  pair in its contract, every pair that has no challenger of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from worker.model import ModelManager, ServedModel
from worker.protocol import plain_label
from worker.retry import pause
from worker.settings import Settings
from worker.sources import FolderSource

logger = logging.getLogger(__name__)

DEFAULT = "default"
Role = Literal["champion", "challenger"]


@dataclass
class Slot:
    """One model's place: its name (``default``, ``pairs/<folder>``, a URI), its role
    and the manager that loads and swaps it."""

    name: str
    role: Role
    manager: ModelManager

    @property
    def model(self) -> ServedModel | None:
        return self.manager.current

    @property
    def pair(self) -> str | None:
        m = self.manager.current
        return None if m is None else m.contract.pair


class Catalog:
    """Every model of one worker, and where a pair's states go."""

    def __init__(self, default: ModelManager, settings: Settings) -> None:
        self.s = settings
        self.default = default
        self.jit = default.jit
        self.slots: dict[str, Slot] = {DEFAULT: Slot(DEFAULT, "champion", default)}
        self.refused: dict[str, str] = {}  # slot name → why it is not loaded (MAX_MODELS, a pair taken twice)
        self._routes: dict[str, ServedModel] = {}
        self._owners: dict[str, str] = {}  # pair → the slot serving it
        self._challengers: dict[str, ServedModel] = {}
        self._challenger_all: ServedModel | None = None
        self.on_change: list[Callable[[Catalog], None]] = []
        self._lock = asyncio.Lock()
        default.on_change.append(lambda _m: self._notify())

    # -- what a batch needs ------------------------------------------------------------------

    @property
    def current(self) -> ServedModel | None:
        """The default model (the one every pair without its own model goes to)."""
        return self.default.current

    def route(self, pair: str | None) -> ServedModel | None:
        """The model that answers ``pair``: its own; else the default, if the default was
        not trained on a named pair (the synthetic generator's), or was trained on this very
        label, or the state names no pair. None: no model here may answer it."""
        if pair is not None:
            model = self._routes.get(pair)
            if model is not None:
                return model
        default = self.default.current
        if default is None or pair is None:
            return default
        own = default.contract.pair
        return default if own is None or own == pair else None

    def served_pairs(self) -> list[str]:
        """The pair labels this worker answers (a synthetic default: every one, not listed)."""
        pairs = sorted(self._routes)
        own = self.default.current.contract.pair if self.default.current is not None else None
        if own is not None and own not in pairs:
            pairs.append(own)
        return pairs

    def unserved(self, pair: str | None) -> str:
        """Why no model here answers ``pair``: the pairs served, and the one meant when the
        label differs from one only by case or separators (``mrk/pfe``, ``MRK-PFE``)."""
        served = self.served_pairs()
        detail = f"no model here was trained for pair {pair!r}: this worker serves {', '.join(served)}"
        meant = [p for p in served if pair is not None and plain_label(p) == plain_label(pair)]
        if meant:
            detail += f"; did you mean {meant[0]}?"
        return detail

    def challenger_for(self, pair: str | None) -> ServedModel | None:
        if pair is not None:
            model = self._challengers.get(pair)
            if model is not None:
                return model
        return self._challenger_all

    def route_key(self, model: ServedModel) -> str:
        """A label bounded by the models loaded: the model's pair, or ``default``."""
        if model is self.default.current:
            return DEFAULT
        return model.contract.pair or DEFAULT

    @property
    def primary(self) -> ServedModel | None:
        """The model that speaks for the worker (heartbeat, /readyz, metrics' model
        info): the default, else (a worker of per-pair models only) the first pair's."""
        if self.default.current is not None:
            return self.default.current
        return next(iter(self._routes.values()), None)

    @property
    def has_challengers(self) -> bool:
        return bool(self._challengers) or self._challenger_all is not None

    @property
    def any_loaded(self) -> bool:
        """Whether this worker answers some pair (a model-less worker defers to peers)."""
        return self.default.current is not None or bool(self._routes)

    def champions(self) -> dict[str, ServedModel]:
        """Route key → model: ``default`` and every pair with a model of its own."""
        out = dict(self._routes)
        if self.default.current is not None:
            out[DEFAULT] = self.default.current
        return out

    def challengers(self) -> list[ServedModel]:
        """Every challenger loaded: one per pair that has its own, and the one for every pair."""
        out = list(self._challengers.values())
        if self._challenger_all is not None:
            out.append(self._challenger_all)
        return out

    # -- loading ---------------------------------------------------------------------------

    def _discover(self) -> None:
        """Slots for the per-pair and challenger folders and URIs there are now."""
        wanted: dict[str, tuple[Role, Callable[[], ModelManager]]] = {}
        places: list[tuple[Role, str, str]] = [
            ("champion", "pairs", self.s.pair_model_uris),
            ("challenger", "challengers", self.s.challenger_uris),
        ]
        for role, folder, _ in places:
            root = self.s.model_dir / folder
            try:
                subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                subfolders = []
            for sub in subfolders:
                wanted[f"{folder}/{sub.name}"] = (role, _folder_manager(sub, self.jit))
        for role, _, uris in places:
            for uri in (u.strip() for u in uris.split(",")):
                if uri:
                    wanted[f"{role}:{uri}"] = (role, _registry_manager(uri, self.s, role))
        for name in [n for n in self.slots if n != DEFAULT and n not in wanted]:
            logger.info("model %s is gone: no longer served", name)
            del self.slots[name]
            self.refused.pop(name, None)
        room = self.s.max_models - 1  # the default's place
        for name in sorted(wanted):
            if name in self.slots:
                room -= 1
                continue
            if room <= 0:
                if name not in self.refused:
                    why = f"MAX_MODELS={self.s.max_models} models are held: {name} is not loaded"
                    logger.error("%s (raise MAX_MODELS, or remove a model)", why)
                    self.refused[name] = why
                continue
            role, make = wanted[name]
            manager = make()
            manager.admit = _same_pair
            manager.on_change.append(lambda _m: self._notify())
            self.slots[name] = Slot(name, role, manager)
            self.refused.pop(name, None)
            room -= 1

    async def check(self, force: bool = False) -> bool:
        """Look for new, changed and removed models; True when any model was swapped in."""
        async with self._lock:
            self._discover()
            swapped = False
            for slot in list(self.slots.values()):
                swapped = await slot.manager.check(force) or swapped
            self._rebuild()
        return swapped

    def _rebuild(self) -> None:
        routes: dict[str, ServedModel] = {}
        owners: dict[str, str] = {}
        challengers: dict[str, ServedModel] = {}
        everyone: ServedModel | None = None

        def incumbent_first(item: tuple[str, Slot]) -> tuple[bool, str]:
            # A pair stays with the slot that served it: a second model for it is refused,
            # whichever folder name sorts first.
            name, slot = item
            pair = slot.model.contract.pair if slot.model is not None else None
            return (pair is None or self._owners.get(pair) != name, name)

        for name, slot in sorted(self.slots.items(), key=incumbent_first):
            model = slot.model
            if name == DEFAULT or model is None:
                continue
            pair = model.contract.pair
            if slot.role == "champion":
                if pair is None:
                    self._refuse(
                        name, "its contract names no pair: a per-pair model must (the default may not)"
                    )
                elif pair in routes:
                    self._refuse(name, f"pair {pair} already has a model ({routes[pair].path})")
                else:
                    routes[pair], owners[pair] = model, name
                    self.refused.pop(name, None)
            elif pair is None:
                everyone = everyone or model
            else:
                challengers.setdefault(pair, model)
        changed = (
            routes != self._routes or challengers != self._challengers or everyone is not self._challenger_all
        )
        self._routes, self._challengers, self._challenger_all = routes, challengers, everyone
        self._owners = owners
        if changed:
            self._notify()

    def _notify(self) -> None:
        for callback in self.on_change:
            callback(self)

    def _refuse(self, name: str, why: str) -> None:
        if self.refused.get(name) != why:
            logger.error("model %s is not served: %s", name, why)
            self.refused[name] = why

    async def watch(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            await pause(stop, interval_s)

    # -- reporting -------------------------------------------------------------------------

    @property
    def source(self) -> Any:
        """The default model's source (folder or registry)."""
        return self.default.source

    @property
    def last_error(self) -> str | None:
        """The last loading error of any model (naming it), None when each loaded cleanly."""
        for name, slot in self.slots.items():
            if slot.manager.last_error:
                return slot.manager.last_error if name == DEFAULT else f"{name}: {slot.manager.last_error}"
        return None

    @property
    def reloads(self) -> int:
        return sum(slot.manager.reloads for slot in self.slots.values())

    @property
    def reload_failures(self) -> int:
        return sum(slot.manager.reload_failures for slot in self.slots.values())

    def status(self) -> list[dict[str, Any]]:
        """Every model: its place, role, pair, what it is, how its loading went."""
        out = []
        for name, slot in sorted(self.slots.items()):
            m, mgr = slot.model, slot.manager
            out.append(
                {
                    "slot": name,
                    "role": slot.role,
                    "pair": None if m is None else m.contract.pair,
                    # what its answers are counted under (statpair_pair_answers_total{pair})
                    "route": None if m is None or slot.role != "champion" else self.route_key(m),
                    "serves": _serves(name, slot, m),
                    "path": None if m is None else m.path,
                    "sha256": None if m is None else m.sha256,
                    "version": None if m is None else m.version,
                    "backend": None if m is None else m.backend,
                    "contract_id": None if m is None else m.contract_id,
                    "reloads": mgr.reloads,
                    "reload_failures": mgr.reload_failures,
                    "last_reload_error": mgr.last_error,
                    "refused": self.refused.get(name),
                }
            )
        for name, why in sorted(self.refused.items()):
            if name not in self.slots:
                out.append({"slot": name, "refused": why})
        return out


def _serves(name: str, slot: Slot, model: ServedModel | None) -> str | None:
    if model is None:
        return None
    if name == DEFAULT:
        return "every pair without a model of its own"
    pair = model.contract.pair
    if slot.role == "challenger":
        return f"shadows {pair}" if pair else "shadows every pair"
    return pair


def _same_pair(new: ServedModel, old: ServedModel | None) -> str | None:
    """A per-pair or challenger slot keeps its pair: a model for another pair dropped into
    its folder (or promoted to its registry alias) is refused, and the slot's model stays."""
    if old is None or new.contract.pair == old.contract.pair:
        return None
    return (
        f"its contract is for {new.contract.pair or 'no pair'}, the model it would replace serves "
        f"{old.contract.pair or 'every pair'}: put it where that pair's model goes"
    )


def _folder_manager(folder: Path, jit: bool) -> Callable[[], ModelManager]:
    return lambda: ModelManager(None, folder, jit, source=FolderSource(None, folder))


def _registry_manager(uri: str, s: Settings, role: Role) -> Callable[[], ModelManager]:
    # A challenger's downloads apart: it may be another alias of the default's model name
    # (models:/statpair-policy@challenger), whose cache a cold start would read from.
    cache = s.model_cache_dir / "challengers" if role == "challenger" else s.model_cache_dir

    def make() -> ModelManager:
        from worker.registry_source import RegistrySource  # only with a registry URI: imports mlflow

        source = RegistrySource.from_settings(s, uri=uri, cache_dir=cache)
        return ModelManager(None, s.model_dir, s.jit, source=source)

    return make
