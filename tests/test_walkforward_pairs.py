"""The shipped real pairs: each file is what its README and sha256 say, loads through the
price loader, and ``python -m agent.pairs`` lists and exports them with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import pairs
from agent.data import load_prices
from agent.env import PairData


@pytest.mark.parametrize(
    ("name", "rows", "first", "last"),
    [
        ("xom_cvx", 5785, "2000-01-03", "2022-12-28"),
        ("ko_pep", 5785, "2000-01-03", "2022-12-28"),
        ("sp500_nasdaq", 5031, "1999-01-04", "2018-12-31"),
    ],
)
def test_each_pair_loads_as_documented(name: str, rows: int, first: str, last: str) -> None:
    pair = pairs.get(name)
    table = load_prices(pairs.path(name))
    assert table.columns == pair.legs and table.date_column == "Date" and not table.dropped
    assert len(table) == rows and table.dates is not None
    assert (table.dates[0], table.dates[-1]) == (first, last)
    assert pair.file in (pairs.FOLDER / "README.md").read_text()
    assert pair.sha256 in (pairs.FOLDER / "README.md").read_text()
    data = PairData.from_csv(pairs.path(name))
    assert 0.5 < data.hedge_ratio < 1.0  # the legs move together: a hedge ratio well above 0


def test_list_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pairs.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in pairs.PAIRS) and "BSD-3-Clause" in out and "NCSA" in out
    assert pairs.main(["export", "ko_pep", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ko_pep.csv")
    assert (tmp_path / "ko_pep.csv").read_bytes() == pairs.path("ko_pep").read_bytes()
    assert pairs.main(["export", "ko_pep", "--out", str(tmp_path / "kp.csv")]) == 0
    assert (tmp_path / "kp.csv").exists()
    assert pairs.main(["export", "gold_silver"]) == 2
    err = capsys.readouterr().err
    assert err == "error: no shipped pair 'gold_silver': the pairs are xom_cvx, ko_pep, sp500_nasdaq\n"


def test_an_altered_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ko_pep.csv").write_text("Date,KO,PEP\n2000-01-03,1,2\n")
    monkeypatch.setattr(pairs, "FOLDER", tmp_path)
    with pytest.raises(pairs.PairError, match="its sha256 is not the shipped file's"):
        pairs.path("ko_pep")
    with pytest.raises(pairs.PairError, match="cannot read the shipped file"):
        pairs.path("xom_cvx")


@pytest.mark.parametrize("name", ["xom_cvx", "sp500_nasdaq"])
def test_expanding_folds_have_contiguous_disjoint_test_windows(name: str, tmp_path: Path) -> None:
    whole = pairs.path(name).read_bytes()
    files = [pairs.export(name, tmp_path, fold) for fold in range(3)]
    assert [f.name for f in files] == [f"{name}.csv", f"{name}-fold1.csv", f"{name}-fold2.csv"]
    held = []
    for fold, file in enumerate(files):
        raw = file.read_bytes()
        assert whole.startswith(raw) and raw.endswith(b"\n")  # the first rows, byte for byte
        table = load_prices(file)
        assert len(table) == pairs.fold_rows(len(load_prices(files[0])), fold)
        held.append(PairData.from_csv(file).held_out)
    # fold k's test window ends exactly where fold k-1's begins: one walk over the three, no row twice
    assert held[2][1] == held[1][0] and held[1][1] == held[0][0]
    assert held[0][1] == len(load_prices(files[0]))


def test_a_fold_too_short_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pairs.main(["export", "ko_pep", "--out", str(tmp_path), "--fold", "9"]) == 2
    assert capsys.readouterr().err == (
        "error: fold 9 of ko_pep would keep 232 rows: "
        "at least 1000 are needed to train, validate and test on\n"
    )
    assert pairs.main(["export", "ko_pep", "--out", str(tmp_path), "--fold", "-1"]) == 2
    assert "a fold is 0 (the whole file) or more, got -1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    # a path without a suffix, or ending in a slash, is a folder, made if missing
    assert pairs.main(["export", "ko_pep", "--out", str(tmp_path / "no" / "such" / "folder")]) == 0
    assert (tmp_path / "no" / "such" / "folder" / "ko_pep.csv").is_file()
    assert pairs.main(["export", "ko_pep", "--out", f"{tmp_path}/data.d/"]) == 0
    assert (tmp_path / "data.d" / "ko_pep.csv").is_file()
    capsys.readouterr()
    (tmp_path / "a-file").write_text("x")
    assert pairs.main(["export", "ko_pep", "--out", str(tmp_path / "a-file" / "sub")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}/a-file/sub: cannot make the folder (")
    assert pairs.main(["export", "ko_pep", "--out", str(tmp_path / "a-file" / "kp.csv")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}/a-file/kp.csv: cannot write it (")
