"""The actor benchmark runs and its JSON has every cell (no timing asserted)."""

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
    table = capsys.readouterr().out
    assert "bs=   1" in table and "speedup ×" in table and "threads=1" in table and "hidden=[16, 16]" in table
