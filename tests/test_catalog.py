"""The catalog of per-pair models, without Redis: a broken newest file in a pair's folder
does not leave the pair to the default when an older file there is good, and a model for
another pair dropped into a pair's folder is refused while that pair keeps its model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import make_settings, write_model
from tests.test_pairs import contract_for
from worker.catalog import Catalog
from worker.model import ModelManager


def _catalog(tmp_path: Path) -> Catalog:
    s = make_settings(tmp_path)
    return Catalog(ModelManager.from_settings(s), s)


async def test_a_broken_newest_file_falls_back_to_the_older_good_one(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "pairs" / "ko-pep"
    good = write_model(folder / "a.pt", seed=3, contract=contract_for("KO/PEP"))
    broken = folder / "b.pt"
    broken.write_bytes(b"garbage")
    os.utime(good, (1_000_000, 1_000_000))  # the broken file is the newest
    catalog = _catalog(tmp_path)
    await catalog.check()
    model = catalog.route("KO/PEP")
    assert model is not None and model.path == str(good)  # not the default: it has none anyway
    assert catalog.last_error is not None and "b.pt" in catalog.last_error
    failures, reloads = catalog.reload_failures, catalog.reloads
    await catalog.check()  # the next look: neither the broken file nor the served one is loaded again
    assert (catalog.reload_failures, catalog.reloads) == (failures, reloads)
    # Once served, a broken newer file is refused and the served model stays.
    newer = folder / "c.pt"
    newer.write_bytes(b"more garbage")
    await catalog.check()
    assert catalog.route("KO/PEP") is model


async def test_another_pairs_model_in_a_pairs_folder_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    ko = write_model(models / "pairs" / "ko-pep" / "m.pt", seed=1, contract=contract_for("KO/PEP"))
    xom = write_model(models / "pairs" / "xom-cvx" / "m.pt", seed=2, contract=contract_for("XOM/CVX"))
    catalog = _catalog(tmp_path)
    await catalog.check()
    before = {p: catalog.route(p) for p in ("KO/PEP", "XOM/CVX")}
    assert before["KO/PEP"] is not None and before["KO/PEP"].path == str(ko)
    # XOM/CVX's model copied, newer, into KO/PEP's folder (a user's slip).
    stray = write_model(models / "pairs" / "ko-pep" / "z.pt", seed=2, contract=contract_for("XOM/CVX"))
    await catalog.check()
    assert catalog.route("KO/PEP") is before["KO/PEP"]  # KO/PEP keeps its model
    assert catalog.route("XOM/CVX") is before["XOM/CVX"] and before["XOM/CVX"].path == str(xom)
    error = catalog.last_error
    assert error is not None and str(stray) in error and "its contract is for XOM/CVX" in error


async def test_a_pair_stays_with_the_folder_that_served_it(tmp_path: Path) -> None:
    """Two folders with a model for one pair: the one serving it keeps it, whatever the names."""
    models = tmp_path / "models"
    write_model(models / "pairs" / "zz-ko" / "m.pt", seed=1, contract=contract_for("KO/PEP"))
    catalog = _catalog(tmp_path)
    await catalog.check()
    serving = catalog.route("KO/PEP")
    assert serving is not None
    write_model(models / "pairs" / "aa-ko" / "m.pt", seed=4, contract=contract_for("KO/PEP"))
    await catalog.check()
    assert catalog.route("KO/PEP") is serving
    assert "pairs/aa-ko" in catalog.refused and "already has a model" in catalog.refused["pairs/aa-ko"]


async def test_a_forced_reload_of_a_broken_model_path_loads_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.model

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    calls = 0
    real = worker.model.prepare

    def counting(*args: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(worker.model, "prepare", counting)
    manager = ModelManager(broken, tmp_path, False)
    assert await manager.check(force=True) is False
    assert calls == 1 and manager.reload_failures == 1
