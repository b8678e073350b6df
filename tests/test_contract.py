"""The pair contract: canonical JSON and id, validation, the CSV contract, the
torch-free checkpoint reader, and imports without torch."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.actor import SACActor
from agent.contract import (
    CHECKPOINT_KEY,
    ContractError,
    PairContract,
    read_checkpoint_contract,
    spread_formula,
)
from agent.env import SYNTHETIC_INTERCEPT, PairConfig, PairData, synthetic_prices
from agent.features import NAMES, WARMUP
from agent.streaming import FeatureBuilder

ROOT = Path(__file__).resolve().parent.parent
REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


def _synthetic() -> PairContract:
    return PairConfig().contract()


def test_canonical_json_and_a_stable_short_id() -> None:
    c = _synthetic()
    text = c.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert c.id == hashlib.sha256(text.encode()).hexdigest()[:12] and len(c.id) == 12
    again = PairContract.from_json(text)
    assert again == c and again.to_json() == text and again.id == c.id
    # Key order and spacing of the input do not matter; content does.
    shuffled = json.dumps(dict(reversed(list(json.loads(text).items()))), indent=2)
    assert PairContract.from_json(shuffled).id == c.id
    assert PairConfig(cost=0.001).contract().id != c.id
    assert c.pair is None and c.instruments.leg_a is None
    assert c.spread.intercept == SYNTHETIC_INTERCEPT and c.spread.estimation == "generator"
    assert list(c.features.names) == list(NAMES) and c.features.warmup == WARMUP and c.features.version == 2


def test_spread_value_and_path_agree_and_recover_the_synthetic_spread() -> None:
    cfg = PairConfig()
    a, b = synthetic_prices(cfg, np.random.default_rng(0), 300)
    spec = cfg.contract().spread
    path = spec.path(a, b)
    assert [spec.value(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)] == path.tolist()
    assert abs(path).max() < 0.5  # the OU spread, up to rounding of exp/log


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["features"].update(version=1), "features: feature set 1 is not computed .* retrain"),
        (lambda d: d["features"]["names"].reverse(), "other names than this version computes"),
        (lambda d: d["features"].update(warmup=120), "other warmup"),
        (lambda d: d.update(cost=-0.1), "cost: Input should be greater than or equal to 0"),
        (
            lambda d: d["spread"].update(hedge_ratio="inf"),
            "spread.hedge_ratio: Input should be a finite number",
        ),
        (lambda d: d.update(instruments={"leg_a": "KO"}), "name both legs or neither"),
        (lambda d: d.update(extra=1), "extra: Extra inputs are not permitted"),
        (lambda d: d["data"].update(kind="excel"), "data: Input tag 'excel' found"),
        (lambda d: d.pop("spread"), "spread: Field required"),
    ],
)
def test_validation_errors_are_one_sentence(change: object, message: str) -> None:
    data = json.loads(_synthetic().to_json())
    change(data)  # type: ignore[operator]
    with pytest.raises(ContractError, match=message) as err:
        PairContract.from_json(json.dumps(data), source="models/x.json")
    assert str(err.value).startswith("models/x.json: ") and "\n" not in str(err.value)


def test_bad_json_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match=r"m\.json: not valid JSON"):
        PairContract.from_json("{", source="m.json")
    with pytest.raises(ContractError, match="a contract is a JSON object, got list"):
        PairContract.from_json("[]")


def test_csv_contract_names_the_file_its_hash_and_the_training_window() -> None:
    data = PairData.from_csv(REAL)
    c = data.contract(cost=0.0005, legs=("SPX", "COMP"))
    assert c.pair == "SPX/COMP" and c.cost == 0.0005
    assert c.data.kind == "csv" and c.data.file == REAL.name
    assert c.data.sha256 == hashlib.sha256(REAL.read_bytes()).hexdigest()
    assert c.data.columns == ("SP500", "NASDAQ") and c.data.date_column == "date"
    assert c.data.train_rows == (0, data.n_train) and c.data.rows == 502
    assert c.data.train_lines == (2, data.n_train + 1)  # the header is line 1
    assert c.data.train_dates == ("2017-01-03", "2018-05-24") and c.data.test_dates == (
        "2018-05-25",
        "2018-12-31",
    )
    assert c.spread.hedge_ratio == data.hedge_ratio and c.spread.estimation == "ols_on_training_window"
    assert data.contract(0.0005).pair == "SP500/NASDAQ"
    # The contract rebuilds the training spread exactly from the file's prices.
    assert np.array_equal(c.spread.path(data.table.a, data.table.b), data.spread)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="only a pair read from a file"):
        PairData.from_prices(data.table.a, data.table.b).contract(0.0005)  # type: ignore[union-attr]


def test_a_builder_from_the_round_tripped_contract_gives_the_same_states() -> None:
    data = PairData.from_csv(REAL)
    c = data.contract(0.0005)
    t = data.table
    assert t is not None
    one = FeatureBuilder(c).warm(t.a, t.b)
    two = FeatureBuilder(PairContract.from_json(c.to_json())).warm(t.a, t.b)
    assert one is not None and two is not None and np.array_equal(one, two)


def _save(path: Path, payload: dict[str, object]) -> Path:
    torch.save(payload, path)
    return path


def test_reads_the_contract_of_a_torch_checkpoint_without_torch(tmp_path: Path) -> None:
    actor = SACActor(hidden=(8, 8))
    c = PairData.from_csv(REAL).contract(0.0005)
    payload = {
        "format": "statpair.sac_actor",
        "version": 2,
        "config": actor.config(),
        "metadata": {"eval_score": 1.5},
        "state_dict": actor.state_dict(),
        "mixed": [torch.tensor([1, 2]), torch.tensor([True]), torch.zeros(2, dtype=torch.float64)],
        CHECKPOINT_KEY: c.to_json(),
    }
    got = read_checkpoint_contract(_save(tmp_path / "policy.pt", payload))
    assert got == c and got.id == c.id
    # The same file still loads with torch's own safe loader.
    assert torch.load(tmp_path / "policy.pt", weights_only=True)[CHECKPOINT_KEY] == c.to_json()


def test_a_checkpoint_without_a_contract_says_to_retrain(tmp_path: Path) -> None:
    actor = SACActor(hidden=(8, 8))
    old = _save(tmp_path / "old.pt", {"format": "statpair.sac_actor", "version": 1, "config": actor.config()})
    with pytest.raises(ContractError, match=r"old.pt: the checkpoint carries no pair contract .* retrain"):
        read_checkpoint_contract(old)
    bad = _save(tmp_path / "bad.pt", {CHECKPOINT_KEY: {"not": "a string"}})
    with pytest.raises(ContractError, match="not a JSON string"):
        read_checkpoint_contract(bad)
    invalid = _save(tmp_path / "invalid.pt", {CHECKPOINT_KEY: '{"cost": 1}'})
    with pytest.raises(ContractError, match=r"invalid.pt: spread: Field required"):
        read_checkpoint_contract(invalid)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_the_reader_refuses_every_other_global(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({CHECKPOINT_KEY: "{}", "x": _Evil()}))
    with pytest.raises(
        ContractError, match=r"evil.pt: cannot read the checkpoint's payload \(refusing to load"
    ):
        read_checkpoint_contract(evil)
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(ContractError, match=r"text\.pt: cannot read the checkpoint"):
        read_checkpoint_contract(tmp_path / "text.pt")
    with pytest.raises(ContractError, match="over the 10-byte checkpoint limit"):
        read_checkpoint_contract(evil, max_bytes=10)
    with pytest.raises(ContractError, match="cannot read the checkpoint"):
        read_checkpoint_contract(tmp_path / "missing.pt")
    legacy = tmp_path / "legacy.pt"
    buf = io.BytesIO()
    torch.save({"a": 1}, buf, _use_new_zipfile_serialization=False)
    legacy.write_bytes(buf.getvalue())
    with pytest.raises(ContractError, match=r"legacy\.pt: cannot read the checkpoint"):
        read_checkpoint_contract(legacy)


def test_the_strategy_side_imports_without_torch(tmp_path: Path) -> None:
    ck = tmp_path / "policy.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, CHECKPOINT_KEY: PairConfig().contract().to_json()}, ck)
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from agent.contract import read_checkpoint_contract\n"
        "from agent.streaming import FeatureBuilder\n"
        "import agent.data, agent.features\n"
        f"c = read_checkpoint_contract({str(ck)!r})\n"
        "b = FeatureBuilder(c)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m])\n"
        "print(c.id, b.needed, loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [PairConfig().contract().id, str(WARMUP + 1), "[]"]


def test_contract_floats_round_trip_exactly() -> None:
    data = PairData.from_csv(REAL)
    c = data.contract(cost=1 / 3)
    again = PairContract.from_json(c.to_json())
    assert again.spread.hedge_ratio == data.hedge_ratio and again.cost == 1 / 3 and math.isfinite(again.cost)


# --- python -m agent.contract MODEL ---------------------------------------------------------------


def _contract_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m agent.contract`` in a process where torch (and every extra) cannot be imported."""
    from tests.test_layers import _WITHOUT_EXTRAS

    code = _WITHOUT_EXTRAS + (
        "import runpy\n"
        f"sys.argv = ['agent.contract', *{list(argv)!r}]\n"
        "try:\n"
        "    runpy.run_module('agent.contract', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch imported'\n"
        "sys.exit(status)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_contract_command_prints_json_and_its_id_without_torch(tmp_path: Path) -> None:
    c = PairData.from_csv(REAL).contract(0.0005)
    ck = _save(tmp_path / "policy.pt", {"state_dict": {"w": torch.ones(2)}, CHECKPOINT_KEY: c.to_json()})
    out = _contract_cli(str(ck))
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and out.stdout.startswith('{\n  "id": ')  # pretty, the id first
    doc = json.loads(out.stdout)
    assert list(doc) == ["id", "contract"] and doc["id"] == c.id
    assert PairContract.from_dict(doc["contract"]) == c
    assert doc["contract"]["data"]["sha256"] == hashlib.sha256(REAL.read_bytes()).hexdigest()


def test_the_contract_command_refuses_a_bad_or_old_file_in_one_line(tmp_path: Path) -> None:
    old = _save(tmp_path / "old.pt", {"format": "statpair.sac_actor", "version": 1, "state_dict": {}})
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for path, reason in [
        (old, "the checkpoint carries no pair contract (written before feature set 2): retrain it"),
        (tmp_path / "text.pt", "cannot read the checkpoint (File is not a zip file)"),
        (tmp_path / "missing.pt", "cannot read the checkpoint ([Errno 2] No such file or directory"),
    ]:
        out = _contract_cli(str(path))
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {path}: {reason}"), out.stderr


@pytest.mark.parametrize(
    ("beta", "alpha", "text"),
    [
        (0.871901, -0.332605, "log KO − 0.871901·log PEP + 0.332605"),
        (-0.0611315, 0.25, "log KO + 0.0611315·log PEP − 0.25"),
        (-0.0611315, -1.5, "log KO + 0.0611315·log PEP + 1.5"),
        (1.0, -0.0, "log KO − 1·log PEP − 0"),
    ],
)
def test_the_spread_formula_folds_a_negative_coefficient_into_its_sign(
    beta: float, alpha: float, text: str
) -> None:
    assert spread_formula("KO", "PEP", beta, alpha) == text
