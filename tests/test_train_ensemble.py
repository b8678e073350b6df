"""Merging seeds: the merged actor serves exactly the average of its members' pre-tanh means,
the worker loads it, and only models of one contract merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent.actor import SACActor
from agent.checkpoint import Metadata, load_checkpoint, save_checkpoint
from agent.ensemble import main, merge
from agent.env import PairData
from tests.conftest import CONTRACT
from worker.model import prepare

REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


def _actors(n: int) -> list[SACActor]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(SACActor(hidden=(16, 8)))
    return out


def test_the_merged_actor_averages_the_members_means_exactly() -> None:
    actors = _actors(3)
    merged = merge(actors)
    x = torch.randn(64, 28)
    with torch.no_grad():
        means = torch.stack([a(x)[0] for a in actors]).mean(dim=0)
        assert merged.hidden == (48, 24)
        assert torch.allclose(merged(x)[0], means, atol=1e-6)
        assert torch.allclose(merged.deterministic(x), torch.tanh(means), atol=1e-6)
    with torch.no_grad():
        assert torch.equal(merge(actors[:1])(x)[0], actors[0](x)[0])


def test_merged_checkpoints_serve_and_mixed_contracts_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contract = PairData.from_csv(REAL).contract(cost=0.0005)
    split = {"split": {"train": [0, 281], "validation": [281, 351], "test": [351, 502]}}
    paths = [
        save_checkpoint(a, tmp_path / f"s{i}.pt", Metadata(extra=split), contract=contract)
        for i, a in enumerate(_actors(2))
    ]
    assert main([str(tmp_path / "ens.pt"), *map(str, paths)]) == 0
    ck = load_checkpoint(tmp_path / "ens.pt")
    assert ck.contract == contract and ck.metadata["split"] == split["split"]
    assert ck.metadata["ensemble_of"] == [str(p) for p in paths]
    assert prepare(tmp_path / "ens.pt", jit=True, state_dim=28).backend == "jit"
    other = save_checkpoint(_actors(1)[0], tmp_path / "other.pt", contract=CONTRACT)
    assert main([str(tmp_path / "bad.pt"), str(paths[0]), str(other)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {other}: contract {CONTRACT.id} is not {contract.id}")
        and err.count("\n") == 1
    )
    assert not (tmp_path / "bad.pt").exists()
    # Its own output among the inputs (a slip of the shell history), a seed twice, one model alone.
    before = paths[0].read_bytes()
    assert main([str(paths[0]), str(paths[0]), str(paths[1])]) == 2
    assert "is one of the models to merge" in capsys.readouterr().err and paths[0].read_bytes() == before
    (tmp_path / "copy.pt").write_bytes(before)
    assert main([str(tmp_path / "twice.pt"), str(paths[0]), str(tmp_path / "copy.pt")]) == 2
    assert f"{tmp_path / 'copy.pt'} is the same model as {paths[0]}" in capsys.readouterr().err
    assert main([str(tmp_path / "one.pt"), str(paths[0])]) == 2
    assert "at least two models" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("twice.pt", "one.pt"))
