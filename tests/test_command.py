"""A command whose reader leaves early (``… | head``) ends quietly: no
BrokenPipeError traceback on stderr. Real processes, real pipes: the parent
closes its read end before the child writes, so the child's first write finds
no reader (EPIPE) every time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_model

ROOT = Path(__file__).resolve().parents[1]


def _reader_gone(args: list[str]) -> subprocess.CompletedProcess[str]:
    with subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader leaves before a byte is written
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    return subprocess.CompletedProcess(args, code, "", err)


def test_the_helper_turns_a_closed_pipe_into_a_quiet_exit() -> None:
    many = (
        "from agent.command import run\n"
        "raise SystemExit(run(lambda: [print('x' * 100) for _ in range(10_000)] and 0))"
    )
    done = _reader_gone(["-c", many])
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 1


@pytest.mark.parametrize("command", ["pairs", "contract"])
def test_commands_end_quietly_when_the_reader_leaves(command: str, tmp_path: Path) -> None:
    if command == "pairs":
        args = ["-m", "agent.pairs", "list"]
    else:
        write_model(tmp_path / "m.pt")
        args = ["-m", "agent.contract", str(tmp_path / "m.pt")]
    done = _reader_gone(args)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 1  # it did try to write, and stopped there
