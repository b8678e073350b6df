"""``python -m worker``; without the ``worker`` extra, one line saying what to install."""

import importlib.util
import sys


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:
        return True


missing = [m for m in ("torch", "pydantic_settings", "prometheus_client") if _missing(m)]
if missing:
    print(
        "python -m worker needs the worker extra: pip install 'statpair[worker]' "
        f"(missing: {', '.join(missing)})",
        file=sys.stderr,
    )
    raise SystemExit(2)

from worker.cli import main  # noqa: E402 - only once the extra is known to be there

raise SystemExit(main())
