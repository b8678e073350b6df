"""A command whose reader leaves early (``… | head``) carries on quietly: no
BrokenPipeError traceback on stderr, its own exit status, and the files it was
asked to write are written. Real processes, real pipes: the parent closes its
read end before the child writes, so the child's first write finds no reader
(EPIPE) every time."""

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
    assert done.returncode == 0


@pytest.mark.parametrize("command", ["pairs", "contract"])
def test_commands_end_quietly_when_the_reader_leaves(command: str, tmp_path: Path) -> None:
    if command == "pairs":
        args = ["-m", "agent.pairs", "list"]
    else:
        write_model(tmp_path / "m.pt")
        args = ["-m", "agent.contract", str(tmp_path / "m.pt")]
    done = _reader_gone(args)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 0


def test_the_files_asked_for_are_written_though_the_reader_left(tmp_path: Path) -> None:
    """rulegrid prints its table, then writes --json: the reader leaving during the table
    must not lose the file (the first version of the fix ended the command there)."""
    csv = tmp_path / "ko_pep.csv"
    assert (
        subprocess.run(
            [sys.executable, "-m", "agent.pairs", "export", "ko_pep", "--out", str(csv)],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        ).returncode
        == 0
    )
    done = _reader_gone(["-m", "agent.rulegrid", "--csv", str(csv), "--json", str(tmp_path / "grid.json")])
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0 and (tmp_path / "grid.json").stat().st_size > 0


@pytest.mark.parametrize("args", [["-m", "agent.rulegrid", "--help"], ["-m", "bench", "--help"]])
def test_help_with_the_reader_gone_exits_0_quietly(args: list[str]) -> None:
    done = _reader_gone(args)  # argparse ends with SystemExit(0), past run()'s return
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert done.returncode == 0


def test_a_closed_stdout_is_no_error() -> None:
    """Started with stdout closed (`>&-`), sys.stdout is None: print() does nothing, nor must run()."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import os; os.close(1); p = {sys.executable!r}; os.execv(p, [p, '-m', 'agent.pairs', 'list'])",
        ],
        cwd=ROOT,
        capture_output=False,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0
