"""``python -m bench [actor|e2e] …``: ``actor`` is the default."""

from bench.cli import main

raise SystemExit(main())
