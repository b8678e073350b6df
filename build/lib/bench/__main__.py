"""``python -m bench [actor|e2e|client|demo] …``: ``actor`` is the default."""

from bench.cli import main

raise SystemExit(main())
