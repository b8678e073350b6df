"""The pair contract: everything a strategy needs to turn two price feeds into a
model's state (instruments, how the spread is built and from which data, the
feature set, the cost), as canonical JSON with a short stable id. Imports no
torch: a checkpoint's contract is read with a restricted unpickler."""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import os
import pickle
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.features import CLIP, FEATURE_SET, NAMES, WARMUP, WINDOWS

CONTRACT_VERSION: Literal[1] = 1
CHECKPOINT_KEY = "contract"  # the checkpoint payload key holding the contract's canonical JSON
MAX_CHECKPOINT_BYTES = 512 * 1024 * 1024

Finite = Annotated[float, Field(allow_inf_nan=False)]


class ContractError(ValueError):
    """A contract that cannot be used: one sentence naming where it came from and why."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Instruments(_Model):
    """The two legs' names (e.g. KO and PEP); both None for a synthetic model."""

    leg_a: str | None = None
    leg_b: str | None = None

    @field_validator("leg_a", "leg_b")
    @classmethod
    def _named(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("a leg name must not be blank")
        return v


class Spread(_Model):
    """spread = log(price A) − hedge_ratio · log(price B) − intercept."""

    log_prices: Literal[True] = True
    hedge_ratio: Finite
    intercept: Finite
    estimation: Literal["ols_on_training_window", "generator"]

    def value(self, price_a: float, price_b: float) -> float:
        """The spread of one pair of prices (positive, finite: not checked here)."""
        return math.log(price_a) - self.hedge_ratio * math.log(price_b) - self.intercept

    def path(
        self, prices_a: Sequence[float] | np.ndarray, prices_b: Sequence[float] | np.ndarray
    ) -> np.ndarray:
        """The spread of two aligned price series, element by element as ``value`` computes it."""
        beta, alpha, log = self.hedge_ratio, self.intercept, math.log
        a, b = (
            np.asarray(prices_a, dtype=np.float64).tolist(),
            np.asarray(prices_b, dtype=np.float64).tolist(),
        )
        return np.array([log(x) - beta * log(y) - alpha for x, y in zip(a, b, strict=True)], dtype=np.float64)


def spread_formula(a: str, b: str, hedge_ratio: float, intercept: float) -> str:
    """``log A − β·log B − α`` as printed, a negative β or α folded into its sign:
    ``log KO + 0.0611315·log PEP + 0.33``, never ``− -0.0611315``."""

    def term(value: float) -> str:
        return f"{'+' if value < 0 else '−'} {abs(value):.6g}"

    return f"log {a} {term(hedge_ratio)}·log {b} {term(intercept)}"


class CsvData(_Model):
    """A user's price file; the hedge ratio and intercept were fitted on ``train_rows`` only."""

    kind: Literal["csv"] = "csv"
    file: str  # base name
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    columns: tuple[str, str]  # price columns of leg A and leg B
    date_column: str | None
    rows: Annotated[int, Field(ge=1)]  # usable rows, after dropping rows with missing values
    dropped_rows: Annotated[int, Field(ge=0)]
    train_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    train_rows: tuple[int, int]  # [start, stop) over the usable rows
    train_lines: tuple[int, int]  # file lines of the first and last training row (the header is line 1)
    train_dates: tuple[str, str] | None  # first and last date of the training window
    test_dates: tuple[str, str] | None  # first and last held-out date
    # log(A/B) over the training rows, lowest and highest: a live tick far outside it (legs
    # swapped, an unadjusted split) is refused by PriceClient. None in contracts made before.
    log_ratio: tuple[Finite, Finite] | None = None

    @model_validator(mode="after")
    def _window_inside_the_rows(self) -> CsvData:
        start, stop = self.train_rows
        if not 0 <= start < stop <= self.rows:
            raise ValueError(f"train_rows {list(self.train_rows)} is not a window of the {self.rows} rows")
        return self


class SyntheticData(_Model):
    """The synthetic generator's parameters (see ``agent.env.PairConfig``)."""

    kind: Literal["synthetic"] = "synthetic"
    half_life: Finite
    sigma: Finite
    regime_prob: Finite
    regime_mean_jump: Finite
    market_sigma: Finite


class FeatureSpec(_Model):
    """The feature set a model was trained on; this build computes feature set 2 only."""

    version: int = FEATURE_SET
    names: tuple[str, ...] = NAMES
    windows: dict[str, tuple[int, ...]] = Field(default_factory=lambda: dict(WINDOWS))
    warmup: int = WARMUP
    clip: float = CLIP

    @model_validator(mode="after")
    def _this_build_computes_it(self) -> FeatureSpec:
        if self.version != FEATURE_SET:
            raise ValueError(
                f"feature set {self.version} is not computed by this version of statpair "
                f"(it computes feature set {FEATURE_SET}): retrain the model"
            )
        mine = {"names": NAMES, "windows": WINDOWS, "warmup": WARMUP, "clip": CLIP}
        for name, value in mine.items():
            if getattr(self, name) != value:
                raise ValueError(f"feature set {FEATURE_SET} has other {name} than this version computes")
        return self


class PairContract(_Model):
    """What a model was trained on, and so what a strategy must compute to use it."""

    contract_version: Literal[1] = CONTRACT_VERSION
    instruments: Instruments = Instruments()
    spread: Spread
    data: CsvData | SyntheticData = Field(discriminator="kind")
    features: FeatureSpec = FeatureSpec()
    cost: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]  # per unit of |position change|, as evaluated

    _canonical: str = PrivateAttr(default="")
    _id: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _both_legs_or_neither(self) -> PairContract:
        if (self.instruments.leg_a is None) != (self.instruments.leg_b is None):
            raise ValueError("name both legs or neither")
        return self

    def model_post_init(self, context: Any, /) -> None:
        payload = self.model_dump(mode="json")
        if payload["data"].get("log_ratio", 0) is None:  # a contract made before it existed keeps its id
            del payload["data"]["log_ratio"]
        self._canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        # Computed once: a strategy sends it with every state.
        self._id = hashlib.sha256(self._canonical.encode()).hexdigest()[:12]

    @property
    def id(self) -> str:
        """A short stable id: the first 12 hex digits of the canonical JSON's sha256."""
        return self._id

    @property
    def pair(self) -> str | None:
        """``"KO/PEP"``, or None for a synthetic model."""
        legs = self.instruments
        return None if legs.leg_a is None else f"{legs.leg_a}/{legs.leg_b}"

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces; equal contracts give equal text."""
        return self._canonical

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "contract") -> PairContract:
        """Parse and validate; ``ContractError`` names ``source`` and the first problem."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ContractError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ContractError(f"{source}: a contract is a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "contract") -> PairContract:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ContractError(f"{source}: {where + ': ' if where else ''}{message}") from None

    @classmethod
    def synthetic(
        cls,
        *,
        hedge_ratio: float,
        intercept: float,
        cost: float,
        half_life: float,
        sigma: float,
        regime_prob: float,
        regime_mean_jump: float,
        market_sigma: float,
    ) -> PairContract:
        """The contract of a model trained on the synthetic generator (no instrument names)."""
        return cls.from_dict(
            {
                "spread": {"hedge_ratio": hedge_ratio, "intercept": intercept, "estimation": "generator"},
                "data": {
                    "kind": "synthetic",
                    "half_life": half_life,
                    "sigma": sigma,
                    "regime_prob": regime_prob,
                    "regime_mean_jump": regime_mean_jump,
                    "market_sigma": market_sigma,
                },
                "cost": cost,
            },
            "synthetic contract",
        )


# --- reading a checkpoint's contract without torch ---------------------------------------------

# torch.save pickles tensors as calls to these; they are stubbed, never run.
_TORCH_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter")}


class _Stub:
    """Stands in for a tensor or storage: the contract reader never needs the weights."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass


class _ContractUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in _TORCH_REBUILDERS or (module == "torch" and name.endswith("Storage")):
            return _Stub
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return None  # a tensor's storage: its bytes stay in the archive, unread


def read_checkpoint_contract(
    path: str | os.PathLike[str], max_bytes: int = MAX_CHECKPOINT_BYTES
) -> PairContract:
    """The contract stored in a checkpoint written by ``torch.save``, read without torch.

    The checkpoint is a zip archive whose ``data.pkl`` holds the payload dict;
    it is unpickled by an unpickler that refuses every global except the few
    torch uses to rebuild tensors, which it replaces with stubs."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise ContractError(f"{path}: over the {max_bytes}-byte checkpoint limit")
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise ContractError(f"{path}: not a torch checkpoint archive (no single data.pkl)")
            if archive.getinfo(names[0]).file_size > max_bytes:  # unpacked, not as stored
                raise ContractError(f"{path}: its payload unpacks to over {max_bytes} bytes")
            raw = archive.read(names[0])
    except (OSError, zipfile.BadZipFile) as exc:
        raise ContractError(f"{path}: cannot read the checkpoint ({exc})") from None
    try:
        payload = _ContractUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we read"
        raise ContractError(f"{path}: cannot read the checkpoint's payload ({exc})") from None
    if not isinstance(payload, dict):
        raise ContractError(f"{path}: the checkpoint's payload is not a dict")
    text = payload.get(CHECKPOINT_KEY)
    if text is None:
        raise ContractError(
            f"{path}: the checkpoint carries no pair contract (written before feature set {FEATURE_SET}): "
            "retrain it with python -m agent.train"
        )
    if not isinstance(text, str):
        raise ContractError(f"{path}: the checkpoint's contract is not a JSON string")
    return PairContract.from_json(text, source=str(path))


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.contract MODEL``: the checkpoint's contract as JSON, with its id."""
    p = argparse.ArgumentParser(
        prog="python -m agent.contract",
        description='Print a checkpoint\'s pair contract as JSON ({"id": …, "contract": …}); needs no torch.',
    )
    p.add_argument("model", type=Path, help="a checkpoint written by python -m agent.train")
    args = p.parse_args(argv)
    try:
        contract = read_checkpoint_contract(args.model)
    except ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The id first, then the canonical JSON's content (sorted keys), indented.
    doc = {"id": contract.id, "contract": json.loads(contract.to_json())}
    print(json.dumps(doc, indent=2, allow_nan=False))  # `| head`: agent.command ends it quietly
    return 0


if __name__ == "__main__":
    from agent.command import run as run_command

    raise SystemExit(run_command(main))
