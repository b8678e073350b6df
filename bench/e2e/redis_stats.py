"""What Redis spent on a scenario, node by node: CPU seconds (``INFO cpu``) and
the calls and microseconds of each command (``INFO commandstats``) between two
readings, and those figures per state answered.

Redis counts a command a script runs as a call of that command too, and the
script's own time includes it: the worker's EVALSHA includes the XADD of each
result and the XACK of the batch, which also show under XADD and XACK. The
commands the benchmark itself sends to watch the run are left out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

# The benchmark's own watching: not part of serving.
BENCH_ONLY = frozenset({"info", "xinfo|groups", "xinfo|stream", "xlen", "hget", "scan", "ping"})
# The commands a state costs, in the order a state meets them; the rest is "other".
HOT = ("xadd", "xreadgroup", "evalsha", "xack", "xread")
# Run inside the worker's script (counted again within EVALSHA's time).
IN_SCRIPT = frozenset({"xack"})


@dataclass(frozen=True)
class NodeReading:
    cpu_s: float | None
    commands: dict[str, tuple[int, int]]  # command → (calls, usec) so far


def read_nodes(nodes: dict[str, redis.Redis]) -> dict[str, NodeReading]:
    """One reading of every node (``INFO cpu`` and ``INFO commandstats``)."""
    out = {}
    for url, client in nodes.items():
        try:
            info = client.info("cpu")
            cpu: float | None = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        except (redis.RedisError, KeyError, ValueError):
            cpu = None
        try:
            stats = client.info("commandstats")
            commands = {
                name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()
            }
        except (redis.RedisError, KeyError, ValueError, TypeError):
            commands = {}
        out[url] = NodeReading(cpu, commands)
    return out


def node_usage(
    before: dict[str, NodeReading],
    after: dict[str, NodeReading],
    roles: dict[str, str],
    shards_of: dict[str, list[int]],
    answered_by_shard: dict[int, int],
    primary_of: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Each node's share of the run: its role (a replica: whose), the shards it
    holds (a replica: its primary's), the states answered in them, CPU seconds,
    and each command's calls and usec. A replica runs what its primary sends it:
    the effects of the scripts and, for each entry a group delivered, an XCLAIM."""
    primary_of = primary_of or {}
    out = []
    for url in sorted(after):
        b, a = before.get(url), after[url]
        cpu = a.cpu_s - b.cpu_s if b is not None and a.cpu_s is not None and b.cpu_s is not None else None
        commands = {}
        for name, (calls, usec) in sorted(a.commands.items()):
            c0, u0 = b.commands.get(name, (0, 0)) if b is not None else (0, 0)
            if calls - c0 and name not in BENCH_ONLY:
                commands[name] = {"calls": calls - c0, "usec": usec - u0}
        shards = shards_of.get(primary_of.get(url, url), [])
        out.append(
            {
                "node": url,
                "role": roles.get(url, "?"),
                "replica_of": primary_of.get(url),
                "shards": shards,
                "states": sum(answered_by_shard.get(s, 0) for s in shards),
                "cpu_s": cpu,
                "commands": commands,
            }
        )
    return out


def per_state(nodes: list[dict[str, Any]], states: int) -> dict[str, Any]:
    """Per state answered: Redis CPU µs over every node, over the primaries and
    over the replicas (None: there are none), and each hot command's calls and µs
    on the primaries (``other``: every other command). ``top_level_us`` is the
    primaries' command time counting what a script ran once: without XACK, and
    without the XADD of each result (one per state), valued at the mean XADD's
    µs: an estimate, since the script's XADDs and the producer's cannot be told
    apart."""
    if states <= 0:
        return {}

    def cpu_us(role: str | None) -> float | None:
        cpus = [n["cpu_s"] for n in nodes if role is None or n["role"] == role]
        if not cpus or any(c is None for c in cpus):
            return None
        return 1e6 * sum(cpus) / states

    by_command: dict[str, dict[str, float]] = {}
    for n in nodes:
        if n["role"] == "replica":
            continue
        for name, v in n["commands"].items():
            key = name if name in HOT else "other"
            slot = by_command.setdefault(key, {"calls": 0.0, "usec": 0.0})
            slot["calls"] += v["calls"]
            slot["usec"] += v["usec"]
    order = (*HOT, "other")
    commands = {
        k: {"calls": v["calls"] / states, "us": v["usec"] / states}
        for k, v in sorted(by_command.items(), key=lambda kv: order.index(kv[0]))
    }
    top = sum(v["us"] for k, v in commands.items() if k not in IN_SCRIPT)
    xadd = commands.get("xadd")
    if xadd and xadd["calls"] > 0:
        top -= xadd["us"] * min(1.0, 1.0 / xadd["calls"])  # one result XADD per state
    return {
        "redis_cpu_us": cpu_us(None),
        "primary_cpu_us": cpu_us("primary"),
        "replica_cpu_us": cpu_us("replica"),
        "commands": commands,
        "top_level_us": top,
    }
