"""CPU accounting: seconds used by the workers (Linux ``/proc/<pid>/stat``) and by
Redis (``INFO cpu``), and what each role used between two readings."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import redis

ROLES = ("workers", "redis", "producers", "collector")


def cpu_seconds(pids: Iterable[int], clients: Iterable[redis.Redis]) -> dict[str, float | None]:
    """CPU seconds used so far by the processes ``pids`` (as "workers") and by the
    Redis servers behind ``clients`` (summed: every node of a cluster); None where
    it cannot be read (not Linux, no INFO)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    workers: float | None = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            workers = (workers or 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):
            workers = None
            break
    used: float | None = 0.0
    for client in clients:
        try:
            info = client.info("cpu")
            used = (used or 0.0) + float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        except (redis.RedisError, KeyError, ValueError):
            used = None
            break
    return {"workers": workers, "redis": used}


def cpu_used(
    before: dict[str, float | None], after: dict[str, float | None], **own: float
) -> dict[str, float | None]:
    """CPU seconds each role used between two ``cpu_seconds`` readings (None where
    one could not be read), plus the roles that measured themselves."""
    used: dict[str, float | None] = {}
    for role, start in before.items():
        end = after.get(role)
        used[role] = end - start if start is not None and end is not None else None
    return {**used, **own}
