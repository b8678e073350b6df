"""How a command behaves when whoever reads its output leaves early (``… | head``):
it carries on quietly, so the files it was asked to write (``--json``, ``--plot``)
are still written, and ends with its own status, not a ``BrokenPipeError``
traceback. Once the reader has gone, stdout is pointed at devnull (the recipe in
Python's ``signal`` docs) so the interpreter's last flush succeeds too. Torch-free."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TextIO


class _ReaderMayLeave:
    """sys.stdout, except that a write or flush finding the reader gone points the
    file descriptor at devnull and drops that output and everything after it."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._inner.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._inner.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._inner.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty…: the real stream's
        return getattr(self._inner, name)


def run(main: Callable[[], int]) -> int:
    """``main()``'s exit status; stdout's reader leaving does not end it early."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): print() already does nothing
        return main()
    out = _ReaderMayLeave(sys.stdout)
    sys.stdout = out
    try:
        return main()
    finally:  # also on SystemExit (argparse's --help and errors)
        out.flush()
