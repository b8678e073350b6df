"""Reading a user's price file: a date column (kept, in ascending order), two
price columns, rows with a missing value dropped and counted (never
interpolated), and every other problem one ``PriceDataError`` sentence naming
the file and the line."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DATE_HEADERS = frozenset({"date", "datetime", "time", "timestamp", "day"})
MISSING = frozenset({"", "na", "nan", "n/a", "null", "none", "-", "."})
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_SLASH_DATE = re.compile(r"^\d{4}/\d{2}/\d{2}$")
_COMPACT_DATE = re.compile(r"^\d{8}$")
DATE_FORMATS = "YYYY-MM-DD, YYYY/MM/DD, YYYYMMDD or YYYY-MM-DD HH:MM[:SS]"
# Real prices move by less than this factor from one row to the next: a larger jump
# is a typo (``1e308``, a misplaced decimal point) or an unadjusted split, and one such
# row moves the fitted hedge ratio, even flips its sign.
MAX_JUMP = 10.0
# Read whole into memory, then into rows of strings (about 10× the file's size): a bound
# that any daily or minute file fits (256 MiB is about six million rows).
MAX_FILE_BYTES = 256 * 1024 * 1024


class PriceDataError(ValueError):
    """A price file that cannot be used: one sentence naming the file and, where it applies, the line."""


@dataclass(frozen=True)
class PriceTable:
    """Two aligned price series read from a file, in ascending date (or file) order."""

    path: Path
    sha256: str  # of the file's bytes
    columns: tuple[str, str]  # the price columns used (leg A, leg B), as spelled in the header
    date_column: str | None
    dates: tuple[str, ...] | None  # ISO 8601, one per kept row; None without a date column
    a: np.ndarray
    b: np.ndarray
    lines: tuple[int, ...]  # the file line of each kept row (the header is line 1)
    dropped: tuple[int, ...]  # lines dropped for a missing value

    def __len__(self) -> int:
        return len(self.a)

    def describe(self) -> str:
        """One line saying what was used: ``prices.csv: A = KO, B = PEP, dates from column Date; …``."""
        when = f"dates from column {self.date_column}" if self.date_column else "no date column (file order)"
        span = f" ({self.dates[0]} … {self.dates[-1]})" if self.dates else ""
        cadence = self.cadence()
        return (
            f"{self.path.name}: A = {self.columns[0]}, B = {self.columns[1]}, {when}; "
            f"{len(self)} rows used{span}, {len(self.dropped)} dropped for a missing value"
            + (f"; warning: {cadence}" if cadence else "")
        )

    def cadence(self) -> str | None:
        """Why the figures' annualisation does not fit these rows, or None for daily rows: a
        Sharpe is annualised as if each row were a trading day (×√252)."""
        if not self.dates or len(self.dates) < 3:
            return None
        stamps = [datetime.fromisoformat(d) for d in self.dates]
        gaps = sorted((b - a).total_seconds() / 86400 for a, b in itertools.pairwise(stamps))
        median = gaps[len(gaps) // 2]
        if 0.5 <= median < 2.0:
            return None
        count, unit = (round(median * 24 * 60), "minute") if median < 0.5 else (round(median), "day")
        apart = f"{count} {unit}{'' if count == 1 else 's'}"
        return (
            f"the rows are a median {apart} apart, not a trading day: every Sharpe is annualised as if "
            "a row were a trading day (×√252)"
        )


def parse_date(text: str) -> date | datetime | None:
    """A date or date-time in one of ``DATE_FORMATS``, or None."""
    try:
        if _ISO_DATE.match(text):
            return date.fromisoformat(text)
        if _SLASH_DATE.match(text):
            return date.fromisoformat(text.replace("/", "-"))
        if _COMPACT_DATE.match(text):
            value = date(int(text[:4]), int(text[4:6]), int(text[6:]))
            return value if 1800 <= value.year <= 2200 else None
        if _ISO_TIME.match(text):
            return datetime.fromisoformat(text)
    except ValueError:
        return None
    return None


def _number(text: str) -> float | None:
    if "_" in text:  # float() reads "1_8.5" as 18.5: a price file never means that
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _read_rows(path: Path, raw: bytes) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PriceDataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    # strict: a quote left open at the end of the file is an error, not a last field
    # that swallowed every row after it.
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    line = 1  # where the row being read starts: a quoted field can run over several lines
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                line = reader.line_num + 1
                continue  # blank line
            if header is None:
                header = [f.strip() for f in fields]
            elif len(fields) != len(header):
                split = delimiter == "," and len(fields) > len(header) and reader.line_num == line
                split = split and any(
                    _SPLIT_NUMBER.fullmatch(f"{a},{b}") for a, b in itertools.pairwise(fields)
                )
                raise PriceDataError(
                    f"{path} line {line}: {len(fields)} fields, the header has {len(header)}"
                    + _runs_on(line, reader.line_num)
                    + (" (a comma inside a number splits it in two: " + _NUMBER_ADVICE + ")" if split else "")
                )
            else:
                rows.append((line, [f.strip() for f in fields]))
            line = reader.line_num + 1
    except csv.Error as exc:
        if reader.line_num > line:
            raise PriceDataError(
                f"{path} line {line}: an unclosed quote: the quoted field that starts on this line "
                f"runs on to line {reader.line_num}, where the CSV reader gave up ({exc})"
            ) from None
        raise PriceDataError(f"{path} line {line}: not readable as CSV ({exc})") from None
    if header is None:
        raise PriceDataError(f"{path}: the file is empty")
    seen: dict[str, str] = {}
    for name in header:
        key = name.casefold()
        if not name:
            raise PriceDataError(f"{path}: the header has a column without a name")
        if key in seen:
            raise PriceDataError(f"{path}: the header names column {name!r} twice")
        seen[key] = name
    if not rows:
        raise PriceDataError(f"{path}: the file has a header but no rows")
    return header, rows


def _runs_on(start: int, end: int) -> str:
    """Why a row has the wrong number of fields, when a quote made it span lines."""
    if end <= start:
        return ""
    return f" (a quoted field runs on from this line to line {end}: an unclosed or stray quote?)"


def _first_value(rows: list[tuple[int, list[str]]], j: int) -> tuple[int, str] | None:
    """Column ``j``'s first value that is not missing, with its line; None when all are."""
    return next(((line, f[j]) for line, f in rows if f[j].casefold() not in MISSING), None)


def _date_column(header: list[str], rows: list[tuple[int, list[str]]]) -> int | None:
    for j, name in enumerate(header):
        if name.casefold() in DATE_HEADERS:
            return j
    # No date-like header: a column of YYYYMMDD integers (or ISO dates) is still dates, not prices.
    for j in range(len(header)):
        values = [f[j] for _, f in rows if f[j].casefold() not in MISSING]
        if values and all(parse_date(v) is not None for v in values):
            return j
    return None


_DATE_LIKE = re.compile(r"\d{1,4}[/.\-]\d{1,2}[/.\-]\d{1,4}([ T].*)?")


def _no_unknown_dates(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> None:
    """No date column was recognised: a column of dates in another format (03/01/2000)
    must not be dropped in silence, or the rows' order is taken for time unchecked, and
    a file in descending order trains backwards."""
    for j, name in enumerate(header):
        first = _first_value(rows, j)
        if first is not None and _DATE_LIKE.fullmatch(first[1]):
            raise PriceDataError(
                f"{path} line {first[0]}: column {name!r} holds {first[1]!r}, a date in a format this "
                f"reader does not take ({DATE_FORMATS}): rewrite the dates, or the rows' order "
                "could not be checked"
            )


def _price_columns(
    path: Path,
    header: list[str],
    rows: list[tuple[int, list[str]]],
    date_j: int | None,
    wanted: Sequence[str] | None,
) -> tuple[int, int]:
    listing = ", ".join(header)
    if wanted is not None:
        if len(wanted) != 2:
            raise PriceDataError(f"{path}: name exactly two price columns, got {len(wanted)}: {list(wanted)}")
        index = {name.casefold(): j for j, name in enumerate(header)}
        picked = []
        for name in wanted:
            j = index.get(name.strip().casefold())
            if j is None:
                raise PriceDataError(f"{path}: no column {name!r} (the columns are: {listing})")
            if j == date_j:
                raise PriceDataError(f"{path}: column {header[j]!r} holds dates, not prices")
            picked.append(j)
        if picked[0] == picked[1]:
            raise PriceDataError(
                f"{path}: the two price columns must differ, got {header[picked[0]]!r} twice"
            )
        return picked[0], picked[1]
    numeric: list[int] = []
    other: list[tuple[str, str]] = []  # (the column's first value and its line, a hint)
    for j in range(len(header)):
        if j == date_j:
            continue
        first = _first_value(rows, j)
        if first is not None and _number(first[1]) is not None:
            numeric.append(j)
        elif first is not None:
            other.append((f"{header[j]} {first[1]!r} on line {first[0]}", _hint(first[1])))
    names = ", ".join(header[j] for j in numeric)
    if len(numeric) < 2:
        hint = next((h for _, h in other if h), "")
        why = f": not numbers: {'; '.join(o for o, _ in other[:3])}{hint}" if other else ""
        raise PriceDataError(
            f"{path}: need two numeric price columns, found {len(numeric)} (columns: {listing}){why}"
        )
    if len(numeric) > 2:
        raise PriceDataError(
            f"{path}: {len(numeric)} numeric columns ({names}): name the two price columns (--columns A,B)"
        )
    return numeric[0], numeric[1]


_SPLIT_NUMBER = re.compile(r"[+-]?\d+,\d+(\.\d*)?")  # two fields that were one number: 10 and 5
_NUMBER_ADVICE = "write prices with a decimal point and no thousands separator"
# 10,5  1,234.5  1.234,5  1 234,5  1'234,5: digits with a comma between two of them.
_COMMA_NUMBER = re.compile(r"[+-]?[\d.\u00a0 ']*\d,\d[\d.,]*")


def _hint(value: str) -> str:
    """What to do about a price that is not a number, when the cause is clear: a comma in
    it (a decimal comma, 10,5, or a thousands separator, 1,234.5: which one is not guessed)."""
    if _COMMA_NUMBER.fullmatch(value.strip()):
        return f" (a comma in a number: {_NUMBER_ADVICE})"
    return ""


def load_prices(path: str | Path, columns: Sequence[str] | None = None) -> PriceTable:
    """Read two price columns (``columns``, or the only two numeric ones) and the date column if any."""
    path = Path(path)
    try:
        size = path.stat().st_size  # 0 for a pipe (`<(…)`): its bytes are counted as read
        if size <= MAX_FILE_BYTES:
            with path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
            size = max(size, len(raw))
        if size > MAX_FILE_BYTES:
            raise PriceDataError(
                f"{path}: {size / 2**20:.1f} MiB, above the {MAX_FILE_BYTES / 2**20:g} MiB a price file "
                "may have: keep the two price columns and the date, or fewer rows"
            )
    except OSError as exc:
        raise PriceDataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    header, rows = _read_rows(path, raw)
    date_j = _date_column(header, rows)
    if date_j is None:
        _no_unknown_dates(path, header, rows)
    ja, jb = _price_columns(path, header, rows, date_j, columns)
    kept: list[tuple[int, date | datetime | None, float, float]] = []
    dropped: list[int] = []
    for line, fields in rows:
        cells = [fields[ja], fields[jb]] + ([fields[date_j]] if date_j is not None else [])
        if any(c.casefold() in MISSING for c in cells):
            dropped.append(line)
            continue
        when = None
        if date_j is not None:
            when = parse_date(fields[date_j])
            if when is None:
                raise PriceDataError(
                    f"{path} line {line}: {header[date_j]} {fields[date_j]!r} is not a date ({DATE_FORMATS})"
                )
        prices = []
        for j in (ja, jb):
            value = _number(fields[j])
            if value is None:
                raise PriceDataError(
                    f"{path} line {line}: {header[j]} {fields[j]!r} is not a number{_hint(fields[j])}"
                )
            if not (math.isfinite(value) and value > 0):
                raise PriceDataError(f"{path} line {line}: {header[j]} {fields[j]} is not a positive price")
            prices.append(value)
        kept.append((line, when, prices[0], prices[1]))
    if date_j is not None:
        _check_order(path, [(line, when) for line, when, _, _ in kept])
    _check_jumps(path, (header[ja], header[jb]), [(line, a, b) for line, _, a, b in kept])
    dates = None if date_j is None else tuple(when.isoformat() for _, when, _, _ in kept if when is not None)
    table = PriceTable(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        columns=(header[ja], header[jb]),
        date_column=None if date_j is None else header[date_j],
        dates=dates,
        a=np.array([k[2] for k in kept], dtype=np.float64),
        b=np.array([k[3] for k in kept], dtype=np.float64),
        lines=tuple(k[0] for k in kept),
        dropped=tuple(dropped),
    )
    logger.info("%s", table.describe())
    return table


def _check_order(path: Path, dated: list[tuple[int, date | datetime | None]]) -> None:
    # Dates and date-times compare as date-times (a date is its midnight); messages show them as written.
    keyed = [(line, when, _key(when)) for line, when in dated]
    for (prev_line, prev, prev_key), (line, when, key) in itertools.pairwise(keyed):
        assert prev is not None and when is not None
        if key == prev_key:
            raise PriceDataError(f"{path} lines {prev_line} and {line}: the date {when.isoformat()} repeats")
        if key < prev_key:
            if len(keyed) > 2 and all(b[2] < a[2] for a, b in itertools.pairwise(keyed)):
                first, last = keyed[0], keyed[-1]
                raise PriceDataError(
                    f"{path}: the dates descend (line {first[0]}: {_iso(first[1])}, last line "
                    f"{last[0]}: {_iso(last[1])}): sort the file in ascending date order"
                )
            raise PriceDataError(
                f"{path} line {line}: the date {when.isoformat()} comes before {prev.isoformat()} "
                f"on line {prev_line}: dates must ascend"
            )


def _check_jumps(path: Path, names: tuple[str, str], rows: list[tuple[int, float, float]]) -> None:
    """Fail on the first price that moves by more than ``MAX_JUMP``× from one kept row
    to the next (in time order, leg A before leg B)."""
    if len(rows) < 2:
        return
    jumps = np.abs(np.diff(np.log([(a, b) for _, a, b in rows]), axis=0)) > math.log(MAX_JUMP)
    if not jumps.any():
        return
    step, leg = (int(i) for i in np.argwhere(jumps)[0])  # row-major: the earliest step first
    before, after = rows[step], rows[step + 1]
    # Name the row out of line: the one the price jumps to (a spike there jumps back
    # on the next step; a wrong scale from there on does not), except a bad first
    # row: the file's first step jumps and the one after it is calm.
    first_row_odd = step == 0 and len(jumps) > 1 and not jumps[1, leg]
    bad = before[0] if first_row_odd else after[0]
    old, new = before[1 + leg], after[1 + leg]
    if new > old:
        moves = f"jumps from {old:g} to {new:g} (×{_factor(new / old)})"
    else:
        moves = f"falls from {old:g} to {new:g} (÷{_factor(old / new)})"
    raise PriceDataError(
        f"{path} line {bad}: {names[leg]} {moves} from line {before[0]} to line {after[0]}: "
        f"real prices move less than {MAX_JUMP:g}× from one row to the next "
        "(a typo, or a split the prices are not adjusted for?); fix or drop the row"
    )


def _factor(ratio: float) -> str:
    """A ratio as a person writes it: 12, 930, 7.6e306 (no ``+``, no leading zeros)."""
    if ratio < 100:
        return f"{ratio:.2g}"
    if ratio < 1e6:
        return f"{ratio:.0f}"
    mantissa, exponent = f"{ratio:.2g}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _iso(when: date | datetime | None) -> str:
    return "" if when is None else when.isoformat()


def _key(when: date | datetime | None) -> datetime:
    assert when is not None
    return when if isinstance(when, datetime) else datetime(when.year, when.month, when.day)
