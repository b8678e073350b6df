"""Price files as users have them: a real daily file, header variations, dates
(ISO and YYYYMMDD), missing values dropped and counted, and one-sentence
errors naming the file and the line."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

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
        (lambda r: r[7].__setitem__(1, "12,5"), r"bad.csv line 9: 4 fields, the header has 3"),
        (lambda r: r[7].__setitem__(1, "abc"), r"bad.csv line 9: SP500 'abc' is not a number"),
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


def test_column_errors_list_what_is_there(tmp_path: Path) -> None:
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
