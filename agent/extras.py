"""A command run without its extra says, in one line, what to install (not a traceback from
the first import that fails). Torch-free: it runs before anything heavy is imported."""

from __future__ import annotations

import importlib.util
import sys


def missing(modules: tuple[str, ...]) -> list[str]:
    """The ``modules`` that cannot be imported here."""
    out = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            out.append(module)
    return out


def require(name: str, command: str, extra: str, modules: tuple[str, ...]) -> None:
    """When the module ``name`` is run as a command (``__main__``) and one of ``modules`` is
    missing, print what to install and exit 2; imported as a library, do nothing."""
    if name != "__main__":
        return
    absent = missing(modules)
    if absent:
        torch = "pip install torch==2.13.0 (the CPU build) first, then " if "torch" in absent else ""
        print(
            f"{command} needs the {extra} extra: {torch}pip install 'statpair[{extra}]' "
            f"(missing: {', '.join(absent)})",
            file=sys.stderr,
        )
        raise SystemExit(2)
