"""The real daily price pairs shipped with statpair (``agent/pairdata/``, sources and licences
in its README): ``python -m agent.pairs list`` shows them, ``python -m agent.pairs export NAME``
writes one as a CSV that ``agent.train --csv`` and ``agent.evaluate`` read."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "pairdata"
MIN_FOLD_ROWS = 1000  # about four years of days: enough for a training, a validation and a test window


@dataclass(frozen=True)
class Pair:
    """One shipped pair: its file, legs, where the prices come from, and why the legs belong together."""

    name: str
    file: str
    legs: tuple[str, str]
    sha256: str
    source: str
    licence: str
    why: str

    @property
    def path(self) -> Path:
        return FOLDER / self.file


PAIRS: dict[str, Pair] = {
    p.name: p
    for p in (
        Pair(
            "xom_cvx",
            "xom_cvx.csv",
            ("XOM", "CVX"),
            "0c9b92dea0067248f983534a8a205e1a32272bd5cca0b936284eed61ab2aa8e8",
            "skfolio 1.12.2, load_sp500_dataset (adjusted closes), 2000-01-03 … 2022-12-28",
            "BSD-3-Clause (skfolio); for testing and examples",
            "two integrated oil majors, same crude and refining exposure",
        ),
        Pair(
            "ko_pep",
            "ko_pep.csv",
            ("KO", "PEP"),
            "5d52e2dca832e52d78253e498cd495f6aae051d96591b89443428903ad225a2f",
            "skfolio 1.12.2, load_sp500_dataset (adjusted closes), 2000-01-03 … 2022-12-28",
            "BSD-3-Clause (skfolio); for testing and examples",
            "the two cola makers: the textbook pair",
        ),
        Pair(
            "sp500_nasdaq",
            "sp500_nasdaq.csv",
            ("SP500", "NASDAQ"),
            "1594657ab670898b2df9204c3516d8400527d60a1ba6cdf4243374cc3ee432c9",
            "arch 8.0.0, data/sp500 and data/nasdaq (index closes), 1999-01-04 … 2018-12-31",
            "NCSA (arch)",
            "two broad US equity indices sharing most large caps",
        ),
    )
}


class PairError(ValueError):
    """An unknown pair name, or a shipped file that is missing or altered."""


def get(name: str) -> Pair:
    """The shipped pair ``name`` (``PairError`` naming the known ones otherwise)."""
    try:
        return PAIRS[name]
    except KeyError:
        raise PairError(f"no shipped pair {name!r}: the pairs are {', '.join(PAIRS)}") from None


def path(name: str) -> Path:
    """The shipped file of pair ``name``, checked against its sha256."""
    pair = get(name)
    try:
        raw = pair.path.read_bytes()
    except OSError as exc:
        raise PairError(
            f"{pair.path}: cannot read the shipped file ({exc.strerror or exc}); "
            "is statpair installed from a checkout (pip install -e .)?"
        ) from None
    if hashlib.sha256(raw).hexdigest() != pair.sha256:
        raise PairError(f"{pair.path}: its sha256 is not the shipped file's: the file was altered")
    return pair.path


def fold_rows(rows: int, fold: int, train_fraction: float = 0.7) -> int:
    """The rows of expanding-window fold ``fold`` of a file of ``rows`` rows: fold 0 is the whole
    file, fold k the first ``int(r * train_fraction)`` rows of fold k−1's ``r``. The trainer
    holds out the last ``1 − train_fraction`` of the rows it is given, so fold k's test window
    ends exactly where fold k−1's begins: the folds' test windows are contiguous and disjoint."""
    if fold < 0:
        raise PairError(f"a fold is 0 (the whole file) or more, got {fold}")
    if not 0.0 < train_fraction < 1.0:
        raise PairError(f"the train fraction must be in (0, 1), got {train_fraction}")
    for _ in range(fold):
        rows = int(rows * train_fraction)
    return rows


def export(name: str, out: Path, fold: int = 0, train_fraction: float = 0.7) -> Path:
    """Write pair ``name``'s file to ``out`` (a folder takes the file's own name, ``NAME-foldK.csv``
    for fold K > 0): the header and the first ``fold_rows`` rows, byte for byte."""
    src = path(name)
    lines = src.read_bytes().splitlines(keepends=True)
    keep = fold_rows(len(lines) - 1, fold, train_fraction)
    if keep < MIN_FOLD_ROWS:
        raise PairError(
            f"fold {fold} of {name} would keep {keep} rows: at least {MIN_FOLD_ROWS} are needed "
            "to train, validate and test on"
        )
    file = src.name if fold == 0 else f"{src.stem}-fold{fold}{src.suffix}"
    dest = out / file if out.is_dir() else out
    try:
        dest.write_bytes(b"".join(lines[: keep + 1]))
    except OSError as exc:
        raise PairError(f"{dest}: cannot write it ({exc.strerror or exc})") from None
    return dest


def _out(text: str) -> Path:
    """``--out``: a folder when it is one, ends in a slash or has no suffix (made if missing),
    else a file."""
    out = Path(text)
    if out.is_dir() or text.endswith(("/", os.sep)) or not out.suffix:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PairError(f"{out}: cannot make the folder ({exc.strerror or exc})") from None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m agent.pairs", description="The real daily price pairs shipped with statpair."
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name, legs, rows, source and licence of each pair")
    ex = sub.add_parser("export", help="write a pair's CSV (Date,A,B) for agent.train --csv")
    ex.add_argument("name", help=f"one of: {', '.join(PAIRS)}")
    ex.add_argument(
        "--out",
        default=".",
        help="a folder (made if missing: a path ending in / or without a suffix such as .csv) or a "
        "file (default: the current folder)",
    )
    ex.add_argument(
        "--fold",
        type=int,
        default=0,
        metavar="K",
        help="expanding-window fold K: 0 the whole file; K the first rows of fold K-1 up to its "
        "test window, so that each fold's test window (the trainer's held-out last 30%%) is the "
        "stretch just before fold K-1's (default 0)",
    )
    ex.add_argument(
        "--train-fraction",
        type=float,
        default=0.7,
        metavar="F",
        help="the --train-fraction the folds will be trained with (default 0.7, the trainer's)",
    )
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            for pair in PAIRS.values():
                rows = len(path(pair.name).read_text().splitlines()) - 1
                print(f"{pair.name:<13} {pair.legs[0] + '/' + pair.legs[1]:<13} {rows} rows  {pair.why}")
                print(f"{'':<13} source: {pair.source}; licence: {pair.licence}")
        else:
            print(export(args.name, _out(args.out), args.fold, args.train_fraction))
    except PairError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from agent.command import run as run_command

    raise SystemExit(run_command(main))
