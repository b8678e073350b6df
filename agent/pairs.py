"""The real daily price pairs shipped with statpair (``agent/pairdata/``, sources and licences
in its README): ``python -m agent.pairs list`` shows them, ``python -m agent.pairs export NAME``
writes one as a CSV that ``agent.train --csv`` and ``agent.evaluate`` read."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "pairdata"


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


def export(name: str, out: Path) -> Path:
    """Copy pair ``name``'s file to ``out`` (a folder takes the file's own name)."""
    src = path(name)
    dest = out / src.name if out.is_dir() else out
    shutil.copyfile(src, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m agent.pairs", description="The real daily price pairs shipped with statpair."
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name, legs, rows, source and licence of each pair")
    ex = sub.add_parser("export", help="write a pair's CSV (Date,A,B) for agent.train --csv")
    ex.add_argument("name", help=f"one of: {', '.join(PAIRS)}")
    ex.add_argument(
        "--out", type=Path, default=Path("."), help="a file or folder (default: the current folder)"
    )
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            for pair in PAIRS.values():
                rows = len(path(pair.name).read_text().splitlines()) - 1
                print(f"{pair.name:<13} {pair.legs[0] + '/' + pair.legs[1]:<13} {rows} rows  {pair.why}")
                print(f"{'':<13} source: {pair.source}; licence: {pair.licence}")
        else:
            print(export(args.name, args.out))
    except PairError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
