"""Price files as users have them: a real daily file, header variations, dates
(ISO and YYYYMMDD), missing values dropped and counted, and one-sentence
errors naming the file and the line."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from agent import pairs
from agent.data import PriceDataError, load_prices
from agent.env import MIN_EPISODE, PairConfig, PairData, PairTradingEnv, rows_needed
from agent.features import WARMUP

REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


def _real_rows() -> list[list[str]]:
    return [line.split(",") for line in REAL.read_text().splitlines()[1:]]


def _write(path: Path, header: str, rows: list[list[str]], sep: str = ",") -> Path:
    path.write_text("\n".join([header] + [sep.join(r) for r in rows]) + "\n")
    return path


def test_the_real_file(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="agent.data"):
        t = load_prices(REAL)
    assert t.columns == ("SP500", "NASDAQ") and t.date_column == "date" and len(t) == 502
    assert t.dates is not None and t.dates[0] == "2017-01-03" and t.dates[-1] == "2018-12-31"
    assert t.sha256 == hashlib.sha256(REAL.read_bytes()).hexdigest() and t.dropped == ()
    assert t.a[0] == 2257.830078 and t.b[-1] == 6635.279785 and t.lines[0] == 2
    said = "sp500_nasdaq_2017_2018.csv: A = SP500, B = NASDAQ, dates from column date; 502 rows used"
    assert said in caplog.text


def test_header_variations_and_delimiters(tmp_path: Path) -> None:
    rows = _real_rows()
    base = load_prices(REAL)
    spaced = _write(tmp_path / "spaced.csv", " Date , sp500 ,NASDAQ ", rows)
    semi = _write(tmp_path / "semi.csv", "DATE;SP500;NASDAQ", rows, sep=";")
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + REAL.read_bytes().replace(b"\n", b"\r\n"))
    for path in (spaced, semi, bom):
        t = load_prices(path)
        assert np.array_equal(t.a, base.a) and np.array_equal(t.b, base.b) and t.dates == base.dates
    assert load_prices(spaced).columns == ("sp500", "NASDAQ")
    named = load_prices(spaced, columns=("nasdaq", " SP500"))  # case and spaces do not matter
    assert named.columns == ("NASDAQ", "sp500") and np.array_equal(named.a, base.b)


def test_yyyymmdd_dates_are_dates_not_prices(tmp_path: Path) -> None:
    rows = [[d.replace("-", ""), a, b] for d, a, b in _real_rows()]
    for header in ("date,SP500,NASDAQ", "when,SP500,NASDAQ"):  # by name, or by content
        t = load_prices(_write(tmp_path / "compact.csv", header, rows))
        assert t.columns == ("SP500", "NASDAQ") and t.dates == load_prices(REAL).dates
    data = PairData.from_csv(tmp_path / "compact.csv")
    assert data.hedge_ratio == PairData.from_csv(REAL).hedge_ratio and data.hedge_ratio > 0.1


def test_missing_values_drop_the_row_and_are_counted(tmp_path: Path) -> None:
    rows = _real_rows()
    rows[3][1] = ""
    rows[10][2] = "NA"
    rows[20][1] = " nan "
    rows[30][0] = ""
    t = load_prices(_write(tmp_path / "gaps.csv", "date,SP500,NASDAQ", rows))
    assert len(t) == 498 and t.dropped == (5, 12, 22, 32)  # file lines: the header is line 1
    assert "4 dropped for a missing value" in t.describe()
    kept = [r for i, r in enumerate(rows) if i not in (3, 10, 20, 30)]
    assert t.a.tolist() == [float(r[1]) for r in kept]  # never interpolated
    assert t.dates is not None and rows[3][0] not in t.dates


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r[7].__setitem__(1, "-5"), r"bad.csv line 9: SP500 -5 is not a positive price"),
        (lambda r: r[7].__setitem__(2, "0"), r"bad.csv line 9: NASDAQ 0 is not a positive price"),
        (lambda r: r[7].__setitem__(2, "inf"), r"bad.csv line 9: NASDAQ inf is not a positive price"),
        (
            lambda r: r[7].__setitem__(1, "12,5"),
            r"bad.csv line 9: 4 fields, the header has 3 \(a comma inside a number splits it in two: ",
        ),
        (
            lambda r: r[7].__setitem__(1, "12,x"),
            r"bad.csv line 9: 4 fields, the header has 3$",
        ),
        (lambda r: r[7].__setitem__(1, "abc"), r"bad.csv line 9: SP500 'abc' is not a number$"),
        (
            lambda r: r[7].__setitem__(1, '"2257,8"'),
            r"bad.csv line 9: SP500 '2257,8' is not a number \(a comma in a number: write prices with a "
            r"decimal point and no thousands separator\)",
        ),
        (lambda r: r[7].__setitem__(1, "2_257.8"), r"bad.csv line 9: SP500 '2_257.8' is not a number"),
        (lambda r: r[7].__setitem__(0, "2017/13/40"), r"bad.csv line 9: date '2017/13/40' is not a date"),
        (lambda r: r[7].__setitem__(0, "1/12/2017"), r"is not a date \(YYYY-MM-DD, YYYY/MM/DD, YYYYMMDD"),
        (lambda r: r[7].__setitem__(0, r[6][0]), r"bad.csv lines 8 and 9: the date 2017-01-11 repeats"),
        (
            lambda r: r.insert(9, r.pop(7)),
            r"bad.csv line 11: the date 2017-01-12 comes before 2017-01-17 on line 10: dates must ascend",
        ),
        (
            lambda r: r.reverse(),
            r"bad.csv: the dates descend \(line 2: 2018-12-31.*sort the file in ascending",
        ),
    ],
)
def test_bad_rows_are_one_sentence_naming_file_and_line(tmp_path: Path, edit: object, message: str) -> None:
    rows = _real_rows()
    edit(rows)  # type: ignore[operator]
    with pytest.raises(PriceDataError, match=message) as err:
        load_prices(_write(tmp_path / "bad.csv", "date,SP500,NASDAQ", rows))
    assert "\n" not in str(err.value) and str(tmp_path / "bad.csv") in str(err.value)


def test_column_errors_list_what_is_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PriceDataError, match=r"no column 'KO' \(the columns are: date, SP500, NASDAQ\)"):
        load_prices(REAL, columns=("KO", "PEP"))
    with pytest.raises(PriceDataError, match="column 'date' holds dates, not prices"):
        load_prices(REAL, columns=("date", "SP500"))
    with pytest.raises(PriceDataError, match="must differ"):
        load_prices(REAL, columns=("SP500", "sp500"))
    three = _write(tmp_path / "three.csv", "date,A,B,C", [[d, a, b, a] for d, a, b in _real_rows()])
    with pytest.raises(PriceDataError, match=r"3 numeric columns \(A, B, C\): name the two price columns"):
        load_prices(three)
    assert load_prices(three, columns=("C", "B")).columns == ("C", "B")
    one = _write(tmp_path / "one.csv", "date,KO,name", [["2020-01-02", "1.5", "x"]])
    with pytest.raises(
        PriceDataError, match=r"need two numeric price columns, found 1 \(columns: date, KO, name\)"
    ):
        load_prices(one)
    # Decimal commas throughout (a European export with ";" between fields): said once, with the lines.
    semi = _write(tmp_path / "semi.csv", "date;A;B", [["2020-01-02", "10,5", "20,1"]], sep=";")
    with pytest.raises(
        PriceDataError,
        match=r"found 0 \(columns: date, A, B\): not numbers: A '10,5' on line 2; B '20,1' on line 2 "
        r"\(a comma in a number: write prices with a decimal point and no thousands separator\)$",
    ):
        load_prices(semi)
    big = tmp_path / "big.csv"
    text = "date,A,B\n" + "2020-01-02,1.25,2.5\n" * 70_000  # 1.3 MiB
    big.write_text(text)
    with monkeypatch.context() as m:
        m.setattr("agent.data.MAX_FILE_BYTES", 2**20)
        m.setattr(Path, "open", lambda *a, **k: pytest.fail("a file above the bound was opened"))
        with pytest.raises(
            PriceDataError, match=r"big\.csv: 1\.3 MiB, above the 1 MiB a price file may have"
        ):
            load_prices(big)
    # A pipe has no size to check first: what is read stops one byte past the bound.
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("w") as f:
            f.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with monkeypatch.context() as m:
        m.setattr("agent.data.MAX_FILE_BYTES", 2**20)
        with pytest.raises(PriceDataError, match=r"pipe\.csv: 1\.0 MiB, above the 1 MiB"):
            load_prices(fifo)
    writer.join(timeout=30)
    assert not writer.is_alive()
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(PriceDataError, match=r"empty\.csv: the file is empty"):
        load_prices(tmp_path / "empty.csv")
    (tmp_path / "dup.csv").write_text("date,KO,ko\n2020-01-02,1,2\n")
    with pytest.raises(PriceDataError, match="names column 'ko' twice"):
        load_prices(tmp_path / "dup.csv")
    with pytest.raises(PriceDataError, match=r"missing\.csv: cannot read the file"):
        load_prices(tmp_path / "missing.csv")


def test_intraday_timestamps(tmp_path: Path) -> None:
    rows = [[f"2024-03-01 {9 + i // 60:02d}:{i % 60:02d}", a, b] for i, (_, a, b) in enumerate(_real_rows())]
    t = load_prices(_write(tmp_path / "bars.csv", "timestamp,SP500,NASDAQ", rows))
    assert t.dates is not None and t.dates[0] == "2024-03-01T09:00:00" and len(t) == 502
    rows[5][0] = rows[4][0]
    with pytest.raises(PriceDataError, match=r"lines 6 and 7: the date 2024-03-01T09:04:00 repeats"):
        load_prices(_write(tmp_path / "bars.csv", "timestamp,SP500,NASDAQ", rows))


def test_a_file_without_dates_keeps_file_order(tmp_path: Path) -> None:
    t = load_prices(_write(tmp_path / "nodate.csv", "KO,PEP", [[a, b] for _, a, b in _real_rows()]))
    assert t.date_column is None and t.dates is None and len(t) == 502
    assert "no date column (file order)" in t.describe()
    assert PairData.from_csv(tmp_path / "nodate.csv").split_dates() is None


def test_too_few_rows_names_how_many_are_needed(tmp_path: Path) -> None:
    need = rows_needed(0.7)
    assert int(need * 0.7) >= WARMUP + MIN_EPISODE and need - int(need * 0.7) >= MIN_EPISODE
    assert int((need - 1) * 0.7) < WARMUP + MIN_EPISODE or need - 1 - int((need - 1) * 0.7) < MIN_EPISODE
    rows = _real_rows()
    short = _write(tmp_path / "short.csv", "date,SP500,NASDAQ", rows[: need - 1])
    with pytest.raises(
        PriceDataError, match=rf"short.csv: {need - 1} usable rows are too few: need at least {need}"
    ):
        PairData.from_csv(short)
    gaps = rows[:need]
    gaps[5] = [gaps[5][0], "", gaps[5][2]]
    with pytest.raises(PriceDataError, match=r"\(1 dropped for a missing value\) are too few"):
        PairData.from_csv(_write(tmp_path / "gaps.csv", "date,SP500,NASDAQ", gaps))
    assert PairData.from_csv(_write(tmp_path / "enough.csv", "date,SP500,NASDAQ", rows[:need])).n_train >= 190


def test_held_out_range_split_dates_and_one_walk_forward() -> None:
    data = PairData.from_csv(REAL)
    assert data.held_out == (351, 502) and data.n_train == 351
    assert data.split_dates() == (("2017-01-03", "2018-05-24"), ("2018-05-25", "2018-12-31"))
    env = PairTradingEnv(PairConfig(episode_length=10), source=data.walk_forward())
    env.reset(0)
    assert env.length == data.walk_forward_steps == 150
    # The walk's first state is the first held-out row; its last step reaches the last row.
    assert env.spread[WARMUP] == data.spread[data.n_train] and env.spread[-1] == data.spread[-1]
    steps, done = 0, False
    while not done:
        _, _, done, _ = env.step(0.5)
        steps += 1
    assert steps == 150
    # Only the training rows fit the spread: rewriting the held-out part changes nothing before it.
    t = data.table
    assert t is not None
    a2 = t.a.copy()
    a2[351:] *= 1.5
    other = PairData.from_prices(a2, t.b)
    assert other.hedge_ratio == data.hedge_ratio and np.array_equal(other.spread[:351], data.spread[:351])


def _edited(tmp_path: Path, edit: object) -> Path:
    rows = _real_rows()
    edit(rows)  # type: ignore[operator]
    return _write(tmp_path / "bad.csv", "date,SP500,NASDAQ", rows)


def _scaled(rows: list[list[str]], start: int, factor: float) -> None:
    """Leg A from row ``start`` on in other units (cents, an unadjusted split)."""
    for r in rows[start:]:
        r[1] = repr(float(r[1]) * factor)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (  # one absurd price: its row is named, the move and both lines given
            lambda r: r[99].__setitem__(1, "1e308"),
            r"bad.csv line 101: SP500 jumps from 2404.39 to 1e\+308 \(×4.2e304\) from line 100 to line 101: "
            r"real prices move less than 10× from one row to the next \(a typo, or a split the prices are "
            r"not adjusted for\?\); fix or drop the row$",
        ),
        (
            lambda r: r[99].__setitem__(2, "5.9"),
            r"bad.csv line 101: NASDAQ falls from 6163.02 to 5.9 \(÷1045\) from line 100 to line 101: ",
        ),
        # From line 101 on in cents: the row where the units change.
        (lambda r: _scaled(r, 99, 100.0), r"bad.csv line 101: SP500 jumps from 2404.39 to 241507 \(×100\)"),
        # A bad first row jumps only into the second: the first is named.
        (
            lambda r: r[0].__setitem__(1, "22.5"),
            r"bad.csv line 2: SP500 jumps from 22.5 to 2270.75 \(×101\) from line 2 to line 3",
        ),
        # Across a row dropped for a missing value: the two kept rows are compared.
        (
            lambda r: (r[98].__setitem__(1, ""), r[99].__setitem__(1, "1e308")),
            r"bad.csv line 101: SP500 jumps from 2398.42 to 1e\+308 \(×4.2e304\) from line 99 to line 101",
        ),
    ],
)
def test_a_price_that_jumps_tenfold_in_a_row_is_refused(tmp_path: Path, edit: object, message: str) -> None:
    with pytest.raises(PriceDataError, match=message) as err:
        load_prices(_edited(tmp_path, edit))
    assert "\n" not in str(err.value)


def test_moves_just_inside_tenfold_are_kept(tmp_path: Path) -> None:
    # ×9 from line 101 on (a 1:9 split, unadjusted): odd, but not the absurd kind.
    t = load_prices(_edited(tmp_path, lambda r: _scaled(r, 99, 9.0)))
    assert len(t) == 502 and t.a[99] / t.a[98] > 8.9
    with pytest.raises(PriceDataError, match=r"line 101: SP500 jumps from 2404.39 to 26565.8 \(×11\)"):
        load_prices(_edited(tmp_path, lambda r: _scaled(r, 99, 11.0)))


def _with_line(source: Path, tmp_path: Path, line: int, text: str) -> Path:
    lines = source.read_text().splitlines()
    lines[line - 1] = text
    out = tmp_path / "quote.csv"
    out.write_text("\n".join(lines) + "\n")
    return out


def test_an_unclosed_quote_names_the_line_it_opens_on(tmp_path: Path) -> None:
    # KO/PEP: the 141 kB after line 101 overflow the CSV reader's 131072-character field.
    ko_pep = _with_line(pairs.path("ko_pep"), tmp_path, 101, '2000-05-24,"14.2,20.1')
    with pytest.raises(PriceDataError) as err:
        load_prices(ko_pep)
    assert str(err.value) == (
        f"{ko_pep} line 101: an unclosed quote: the quoted field that starts on this line runs on to "
        "line 5365, where the CSV reader gave up (field larger than field limit (131072))"
    )
    # A short file: the quote runs to its end (it was a last field that swallowed every row).
    for text in ('2017-05-25,"2415.07,6205.26', '2017-05-25,2415.07,"6205.26'):
        with pytest.raises(PriceDataError, match=r"quote.csv line 101: an unclosed quote: .* to line 503, "):
            load_prices(_with_line(REAL, tmp_path, 101, text))
    # A stray quote further down closes it: the row's fields run over four lines.
    rows = REAL.read_text().splitlines()
    rows[100], rows[103] = '2017-05-25,2415.07,"6205.26', '2017-05-31,2411.8",6198.52'
    (tmp_path / "stray.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(
        PriceDataError,
        match=r"stray.csv line 101: 4 fields, the header has 3 \(a quoted field runs on from this line to "
        r"line 104: an unclosed or stray quote\?\)$",
    ):
        load_prices(tmp_path / "stray.csv")
    # Quoted fields that close are fine.
    assert len(load_prices(_with_line(REAL, tmp_path, 101, '"2017-05-25","2415.07","6205.26"'))) == 502


@pytest.mark.parametrize("leg_b", ["same", "flat a"])
def test_a_spread_with_nothing_to_trade_is_refused(tmp_path: Path, leg_b: str) -> None:
    # B copied from A: log A − 1·log B is 0 everywhere; A flat: the fit gives β = 0, a constant spread
    same = [[d, a, a] for d, a, _ in _real_rows()]
    flat = [[d, "10", b] for d, _, b in _real_rows()]
    rows = same if leg_b == "same" else flat
    path = _write(tmp_path / "flat.csv", "date,SP500,NASDAQ", rows)
    with pytest.raises(PriceDataError, match=r"flat.csv: the spread .* is constant over the training window"):
        PairData.from_csv(path)


def test_rows_that_are_not_trading_days_are_said_to_be(tmp_path: Path) -> None:
    rows = _real_rows()
    assert load_prices(REAL).cadence() is None and "warning" not in load_prices(REAL).describe()
    minutes = [[f"2020-01-02 {9 + i // 60:02d}:{i % 60:02d}", a, b] for i, (_, a, b) in enumerate(rows[:300])]
    t = load_prices(_write(tmp_path / "minutes.csv", "time,SP500,NASDAQ", minutes))
    assert "a median 1 minute apart" in t.describe() and "×√252" in t.describe()
    weekly = load_prices(_write(tmp_path / "weekly.csv", "date,SP500,NASDAQ", rows[::5]))
    assert "a median 7 days apart" in (weekly.cadence() or "")


@pytest.mark.parametrize(
    ("value", "hinted"),
    [
        *[(v, True) for v in ("10,5", "1,234.50", "1.234,5", "1.234.567,89", "1 234,5")],
        *[(v, False) for v in ("abc", "$10.5", "1.2.3", "1,5e3", ",5")],
    ],
)
def test_a_comma_in_a_number_is_hinted_in_every_usual_spelling(
    tmp_path: Path, value: str, hinted: bool
) -> None:
    rows = _real_rows()
    rows[7][1] = f'"{value}"'
    with pytest.raises(PriceDataError, match="is not a number") as err:
        load_prices(_write(tmp_path / "c.csv", "date,SP500,NASDAQ", rows))
    assert ("a comma in a number" in str(err.value)) == hinted


def test_dates_in_an_unknown_format_are_not_dropped_in_silence(tmp_path: Path) -> None:
    """QA: a file with dates written 03/01/2000 under an unknown header, rows descending, was
    read as 'no date column (file order)' and trained backwards."""
    rows = [[f"{d[8:10]}/{d[5:7]}/{d[:4]}", a, b] for d, a, b in _real_rows()][::-1]
    with pytest.raises(
        PriceDataError, match=r"dmy\.csv line 2: column 'AsOf' holds '\d\d/\d\d/\d{4}', a date"
    ):
        load_prices(_write(tmp_path / "dmy.csv", "AsOf,SP500,NASDAQ", rows))
    plain = [[a, b] for _, a, b in _real_rows()]  # no date column at all: file order, as documented
    assert load_prices(_write(tmp_path / "plain.csv", "SP500,NASDAQ", plain)).dates is None
