"""``python -m worker``; without the ``worker`` extra, one line saying what to install."""

from agent.extras import require

require(__name__, "python -m worker", "worker", ("torch", "pydantic_settings", "prometheus_client"))

from worker.cli import main  # noqa: E402 - only once the extra is known to be there

raise SystemExit(main())
