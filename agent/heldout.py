"""The held-out part of a price file for a model: the file its contract names (or the
one given, checked against the contract's sha256), with the contract's spread and
training window, ready for one walk forward (``agent.scoring.walk_forward``). The
spread is always the contract's: what a served model computes from the same prices."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from agent.contract import CsvData, PairContract, spread_formula
from agent.data import PriceTable, load_prices, parse_date
from agent.env import PairData
from agent.features import WARMUP

DEFAULT_TRAIN_FRACTION = (
    0.7  # a synthetic model on a file: walk the rows after this share, as training splits
)


class DataError(ValueError):
    """Evaluation data that does not fit the model: one sentence naming the file and the reason."""


def columns_flag(text: str | None) -> list[str] | None:
    """``--columns A,B`` as a list of names (the loader checks there are two, naming the file)."""
    return None if text is None else [c.strip() for c in text.split(",")]


@dataclass(frozen=True)
class HeldOut:
    """A price file's rows as a ``PairData`` whose held-out part is what is evaluated."""

    data: PairData
    table: PriceTable
    matches: bool  # the file and columns are the ones the model was trained on
    synthetic: bool = False  # the model was trained on synthetic paths, not on a file
    trained_columns: tuple[str, str] | None = None  # the contract's, when the file is its own

    @property
    def rows(self) -> tuple[int, int]:
        return self.data.held_out

    def span(self) -> str:
        """``2018-05-25 … 2018-12-31 (file lines 353–503)``."""
        start, stop = self.rows
        t = self.table
        lines = f"file lines {t.lines[start]}–{t.lines[stop - 1]}"
        return f"{t.dates[start]} … {t.dates[stop - 1]} ({lines})" if t.dates else lines

    def describe(self) -> list[str]:
        t, d = self.table, self.data
        if self.synthetic:
            check = "the model was trained on synthetic paths: no file to check"
            how = "the synthetic generator's, from the model's contract, as a served model computes it"
        elif self.matches:
            check, how = "sha256 matches the model's contract", "from the model's contract"
        elif self.trained_columns is not None:  # its own file, other columns: legs swapped or replaced
            check = (
                f"the file the model was trained on, but read as {','.join(t.columns)}, not its "
                f"{','.join(self.trained_columns)}: NOT the pair it learned (--allow-other-data)"
            )
            how = "from the model's contract"
        else:
            check = f"sha256 {t.sha256[:12]}…: NOT the data the model was trained on (--allow-other-data)"
            how = "from the model's contract"
        a, b = t.columns
        return [
            f"data: {t.path} ({check})",
            f"      {t.describe()}",
            f"spread: {spread_formula(a, b, d.hedge_ratio, d.intercept)} ({how})",
        ]

    def as_dict(self) -> dict[str, Any]:
        t, (start, stop) = self.table, self.rows
        return {
            "kind": "csv",
            "file": str(t.path),
            "sha256": t.sha256,
            "matches_contract": self.matches,
            "columns": list(t.columns),
            "date_column": t.date_column,
            "rows": len(t),
            "dropped_rows": len(t.dropped),
            "held_out_rows": [start, stop],
            "held_out_lines": [t.lines[start], t.lines[stop - 1]],
            "held_out_dates": [t.dates[start], t.dates[stop - 1]] if t.dates else None,
            "steps": self.data.walk_forward_steps,
            "spread": {
                "hedge_ratio": self.data.hedge_ratio,
                "intercept": self.data.intercept,
                "from": "contract",
            },
            "model_trained_on": "synthetic paths"
            if self.synthetic
            else "this file"
            if self.matches
            else "another file",
        }


def held_out(
    model: str | os.PathLike[str],
    contract: PairContract,
    csv: Path | None = None,
    columns: str | None = None,
    allow_other_data: bool = False,
    train_fraction: float | None = None,
) -> HeldOut:
    """The data ``model`` is evaluated on. A model trained on a file: that file (found in
    the current directory unless ``csv`` says where), refused if its sha256 or columns
    differ from the contract's unless ``allow_other_data``; its spread and split are the
    contract's. A synthetic model on ``csv``: the rows after its first ``train_fraction``."""
    names = columns_flag(columns)
    d = contract.data
    if not isinstance(d, CsvData):
        if csv is None:
            raise DataError(f"{model} was trained on synthetic paths: name a price file with --csv FILE")
        fraction = DEFAULT_TRAIN_FRACTION if train_fraction is None else train_fraction
        if not 0.0 < fraction < 1.0:
            raise DataError(f"--train-fraction must be between 0 and 1, got {fraction}")
        table = load_prices(csv, names)
        return _held_out(csv, contract, table, int(len(table) * fraction), False, fraction, synthetic=True)
    path = Path(d.file) if csv is None else csv
    if csv is None and not path.exists():
        raise DataError(
            f"{model} was trained on {d.file} (sha256 {d.sha256[:12]}…), which is not in the current "
            "directory: point at it with --csv FILE"
        )
    table = load_prices(path, names or d.columns)
    same_file = table.sha256 == d.sha256
    matches = same_file and table.columns == d.columns
    if not matches and not allow_other_data:
        if not same_file:
            raise DataError(
                f"{path} is not the file {model} was trained on ({d.file}, sha256 {d.sha256[:12]}…, this "
                f"file's is {table.sha256[:12]}…; a copy with other line endings counts as another file): "
                "point --csv at that file, or pass --allow-other-data to evaluate on this one with the "
                "model's spread"
            )
        raise DataError(
            f"{path}: columns {','.join(table.columns)} are not the ones {model} was trained on "
            f"({','.join(d.columns)}): drop --columns, or pass --allow-other-data"
        )
    if same_file:
        if len(table) != d.rows:
            raise DataError(f"{path}: {len(table)} usable rows, the model's contract says {d.rows}")
        start = d.train_rows[1]
    else:
        start = _first_after_training(path, table, d)
    held = _held_out(path, contract, table, start, matches, d.train_fraction)
    if same_file and not matches:
        held = replace(held, trained_columns=(d.columns[0], d.columns[1]))
    return held


def _held_out(
    path: Path,
    contract: PairContract,
    table: PriceTable,
    start: int,
    matches: bool,
    train_fraction: float,
    synthetic: bool = False,
) -> HeldOut:
    if start < WARMUP:
        raise DataError(
            f"{path}: the held-out part starts on line {table.lines[start]}, after {start} rows: "
            f"{WARMUP} rows of history before it are needed"
        )
    if len(table) - start < 2:
        raise DataError(
            f"{path}: {len(table) - start} row(s) after the training window: a walk forward needs at least 2"
        )
    data = PairData(
        spread=contract.spread.path(table.a, table.b),
        hedge_ratio=contract.spread.hedge_ratio,
        intercept=contract.spread.intercept,
        n_train=start,
        train_fraction=train_fraction,
        dates=table.dates,
        table=table,
    )
    return HeldOut(data, table, matches=matches, synthetic=synthetic)


def _first_after_training(path: Path, table: PriceTable, d: CsvData) -> int:
    """Another file: the rows after the training window's last date (or, without dates, after its rows)."""
    if not (table.dates and d.train_dates):
        return d.train_rows[1]
    last = _when(d.train_dates[1])
    for i, text in enumerate(table.dates):
        if _when(text) > last:
            return i
    raise DataError(f"{path}: no row after {d.train_dates[1]}, the last date the model was trained on")


def _when(text: str) -> datetime:
    value: date | datetime | None = parse_date(text)
    if value is None:
        value = datetime.fromisoformat(text)  # ISO with seconds and fractions, as the loader writes them
    return value if isinstance(value, datetime) else datetime(value.year, value.month, value.day)
