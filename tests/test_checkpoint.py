"""Checkpoint round trip, every rejection, and atomic save."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.actor import SACActor
from agent.checkpoint import CheckpointError, Metadata, load_checkpoint, save_checkpoint
from tests.conftest import CONTRACT


def _actor(seed: int = 0, state_dim: int = 28) -> SACActor:
    torch.manual_seed(seed)
    return SACActor(state_dim=state_dim, hidden=(16, 16))


def test_round_trip(tmp_path: Path) -> None:
    actor = _actor()
    path = save_checkpoint(
        actor, tmp_path / "m.pt", Metadata(run_id="abc", episodes=7, eval_score=1.25), contract=CONTRACT
    )
    ck = load_checkpoint(path, state_dim=28)
    assert ck.metadata["run_id"] == "abc" and ck.metadata["episodes"] == 7
    assert ck.metadata["eval_score"] == 1.25 and "created_utc" in ck.metadata
    assert ck.actor.config() == actor.config()
    assert len(ck.sha256) == 64 and ck.size == path.stat().st_size
    assert ck.mtime_utc.endswith("+00:00")
    x = torch.randn(9, 28)
    with torch.no_grad():
        assert torch.equal(ck.actor.deterministic(x), actor.deterministic(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


def test_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read file") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert info.value.path.endswith("nope.pt")


def test_rejects_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "e.pt")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_rejects_truncated(tmp_path: Path, keep: float) -> None:
    path = save_checkpoint(_actor(), tmp_path / "t.pt", contract=CONTRACT)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert "t.pt" in str(info.value)


def test_rejects_garbage_saying_it_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "g.pt").write_bytes(b"this is not a model" * 100)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "g.pt")
    assert str(info.value) == (
        f"{tmp_path / 'g.pt'}: not a readable checkpoint: not a torch zip archive, so not a statpair "
        "checkpoint (it starts with b'this is ')"
    )
    assert info.value.__context__ is None  # refused before torch.load: no torch message behind it


def test_a_file_weights_only_refuses_is_not_a_checkpoint_and_no_unsafe_advice(tmp_path: Path) -> None:
    torch.save({"state_dict": np.zeros(3)}, tmp_path / "numpy.pt")  # a numpy array: refused
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "numpy.pt")
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'numpy.pt'}: not a readable checkpoint: it holds objects that a weights_only load "
        "refuses, so not a statpair checkpoint (Unsupported global: GLOBAL numpy."
    )
    # torch's own message says to re-run with weights_only=False: never repeated, nor chained.
    assert "False" not in message and "\n" not in message and len(message) < 300
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_rejects_non_checkpoint_torch_file(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a statpair\.sac_actor checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(_actor().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"not a statpair\.sac_actor checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")


def test_rejects_pickled_code(tmp_path: Path) -> None:
    # A whole pickled module (arbitrary classes) is refused by weights_only.
    torch.save(_actor(), tmp_path / "module.pt")
    with pytest.raises(
        CheckpointError,
        match=r"weights_only load refuses, so not a statpair checkpoint \(Unsupported global: "
        r"GLOBAL agent\.actor\.SACActor was not an allowed global by default\)$",
    ):
        load_checkpoint(tmp_path / "module.pt")


def test_rejects_other_state_dim(tmp_path: Path) -> None:
    path = save_checkpoint(_actor(state_dim=27), tmp_path / "d.pt", contract=CONTRACT)
    with pytest.raises(CheckpointError, match="state_dim is 27, expected 28"):
        load_checkpoint(path, state_dim=28)
    # Alone, the file is still refused: its contract's 28 features do not fit the actor.
    with pytest.raises(
        CheckpointError, match="the actor takes 27 values but its contract's feature set has 28"
    ):
        load_checkpoint(path)


def test_a_format_1_checkpoint_says_to_retrain(tmp_path: Path) -> None:
    actor = _actor()
    payload = {
        "format": "statpair.sac_actor",
        "version": 1,
        "config": actor.config(),
        "metadata": {},
        "state_dict": actor.state_dict(),
    }
    torch.save(payload, tmp_path / "v1.pt")
    with pytest.raises(
        CheckpointError, match=r"v1.pt: checkpoint format 1 predates the pair contract .* retrain"
    ):
        load_checkpoint(tmp_path / "v1.pt")


def test_the_contract_travels_with_the_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(_actor(), tmp_path / "c.pt", contract=CONTRACT)
    assert load_checkpoint(path).contract == CONTRACT


def test_rejects_non_finite_weights(tmp_path: Path) -> None:
    actor = _actor()
    with torch.no_grad():
        actor.mean_head.weight[0, 3] = float("nan")
    path = save_checkpoint(actor, tmp_path / "n.pt", contract=CONTRACT)
    with pytest.raises(CheckpointError, match=r"'mean_head\.weight' has non-finite values"):
        load_checkpoint(path)


def test_rejects_weights_that_do_not_fit_config(tmp_path: Path) -> None:
    path = save_checkpoint(_actor(), tmp_path / "w.pt", contract=CONTRACT)
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = [32, 32]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit the config"):
        load_checkpoint(path)


def test_rejects_oversized(tmp_path: Path) -> None:
    path = save_checkpoint(_actor(), tmp_path / "big.pt", contract=CONTRACT)
    with pytest.raises(CheckpointError, match="over the 100-byte limit"):
        load_checkpoint(path, max_bytes=100)


def test_atomic_save_reader_never_sees_partial_file(tmp_path: Path) -> None:
    """A reader looping during repeated saves sees only whole old or new files."""
    path = tmp_path / "live.pt"
    actors = [_actor(seed=1), _actor(seed=2)]
    meta = {"created_utc": "fixed"}  # so each actor's file has one exact content
    save_checkpoint(actors[0], path, meta, contract=CONTRACT)
    valid = {
        load_checkpoint(save_checkpoint(a, tmp_path / f"ref{i}.pt", meta, contract=CONTRACT)).sha256
        for i, a in enumerate(actors)
    }
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(60):
                save_checkpoint(actors[i % 2], path, meta, contract=CONTRACT)
        # Any error in the writer thread, whatever its type, is surfaced by the assert below.
        except BaseException as exc:  # noqa: BLE001  # pragma: no cover
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    reads = 0
    while not stop.is_set() and reads < 5000:
        ck = load_checkpoint(path)  # raises on a partial file
        seen.add(ck.sha256)
        reads += 1
    thread.join(timeout=60)
    assert not errors and not thread.is_alive()
    assert reads > 0 and seen <= valid
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_checkpoint_gets_the_mode_of_a_normal_file_and_keeps_the_one_it_replaces(tmp_path: Path) -> None:
    """mkstemp makes files 0600: a worker running as another user on a shared MODEL_DIR
    could not read the trainer's checkpoints."""
    old = os.umask(0o022)
    try:
        path = save_checkpoint(SACActor(hidden=(4,)), tmp_path / "m.pt", contract=CONTRACT)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)  # an operator's choice survives the next save
        save_checkpoint(SACActor(hidden=(4,)), path, contract=CONTRACT)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)
