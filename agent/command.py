"""How a command ends when whoever reads its output leaves early (``… | head``):
quietly, not with a ``BrokenPipeError`` traceback (the recipe in Python's
``signal`` docs: point stdout at devnull so the interpreter's last flush
succeeds). Torch-free."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

PIPE_CLOSED = 1  # the exit status when the reader left, as in the docs' recipe


def run(main: Callable[[], int]) -> int:
    """``main()``'s exit status, or :data:`PIPE_CLOSED` once stdout's reader has gone."""
    try:
        status = main()
        sys.stdout.flush()  # inside the try: a reader that left shows here, not at exit
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return PIPE_CLOSED
