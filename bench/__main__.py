"""``python -m bench [actor|e2e|client|demo] …``: ``actor`` is the default."""

from agent.command import run
from bench.cli import main

raise SystemExit(run(main))
