"""The actor benchmark runs and its JSON has every cell and the streaming
feature builder's figures (no timing asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agent.features import STATE_DIM
from bench.cli import main


def test_bench_json_has_every_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    rc = main(
        [
            "--batch-sizes",
            "1,4,16",
            "--warmup",
            "2",
            "--iters",
            "6",
            "--rounds",
            "3",
            "--hidden",
            "16,16",
            "--feature-ticks",
            "40",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert [c["batch_size"] for c in data["cells"]] == [1, 4, 16]
    assert data["threads"] == 1 and data["state_dim"] == STATE_DIM and data["hidden"] == [16, 16]
    for cell in data["cells"]:
        for backend in ("eager", "jit"):
            stats = cell[backend]
            assert stats["n"] == 6
            for key in ("mean", "p50", "p95", "p99", "max"):
                assert math.isfinite(stats[key]) and stats[key] > 0
        assert cell["speedup_p50"] > 0
    for key in ("features", "features_paced"):
        features = data[key]
        assert features["ticks"] == 40 and features["target_us"] == 20.0
        assert 0 < features["p50_us"] <= features["p95_us"] <= features["p99_us"]
        assert math.isfinite(features["mean_us"]) and features["mean_us"] > 0
    assert data["features_paced"]["gap_s"] == 0.001 and "gap_s" not in data["features"]
    table = capsys.readouterr().out
    assert "bs=   1" in table and "speedup ×" in table and "threads=1" in table and "hidden=[16, 16]" in table
    tight, paced = [row for row in table.splitlines() if row.startswith("streaming features")]
    assert "40 ticks back to back" in tight and "40 ticks 1 ms idle before each" in paced
    assert all("p99=" in line and "target ≤ 20 µs per update" in line for line in (tight, paced))


def test_feature_timing_can_be_skipped(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--batch-sizes", "1", "--warmup", "1", "--iters", "2", "--rounds", "1", "--hidden", "8"]
    assert main([*argv, "--feature-ticks", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["features"] is None and data["features_paced"] is None
