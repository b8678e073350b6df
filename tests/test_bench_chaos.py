"""``python -m bench chaos`` against a redis-server of its own: every scenario counts what
it sent and what came back; none loses a state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import need_binary

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_chaos_counts_every_state_and_loses_none(tmp_path: Path) -> None:
    need_binary("redis-server")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "chaos",
            "--states",
            "300",
            "--rate",
            "600",
            "--json",
            str(tmp_path / "c.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = json.loads((tmp_path / "c.json").read_text())
    assert [r["scenario"] for r in rows] == ["kill", "pause", "restart", "full"]
    for r in rows:
        assert r["sent"] == 300 and r["lost"] == 0 and r["answered"] == 300, r
    assert out.stdout.splitlines()[0].split()[:7] == [
        "scenario",
        "sent",
        "answered",
        "lost",
        "duplicated",
        "dead",
        "s",
    ]


def test_chaos_refuses_an_unknown_scenario() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "chaos", "--scenarios", "flood"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "not flood" in out.stderr
