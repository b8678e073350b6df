"""The tables of ``python -m bench e2e --cluster N``: throughput and CPU per state
(workers, Redis over every node, command time), Redis's time per state by
command, and each node's CPU per state of the shards it holds. A scenario run
several times (``--repeat``) shows the median of each figure, and its node line
comes from the run of median throughput."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from bench.e2e.redis_stats import HOT
from bench.e2e.report import cpu_shares
from bench.e2e.result import Result

COMMANDS = (*HOT, "other")


def _num(value: float | None, fmt: str = "6.1f") -> str:
    width = fmt.split(".")[0] or "0"
    return f"{'-':>{width}}" if value is None else format(value, fmt)


def _median(runs: list[Result], figure: Callable[[Result], float | None]) -> float | None:
    values = [v for v in map(figure, runs) if v is not None]
    return statistics.median(values) if values else None


def _port(url: str) -> str:
    return url.rsplit(":", 1)[-1]


def grouped(results: list[Result]) -> dict[str, list[Result]]:
    """The runs of each scenario, in the order scenarios first ran."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.scenario.name, []).append(r)
    return groups


def representative(runs: list[Result]) -> Result:
    """The run of median throughput (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r.throughput)[(len(runs) - 1) // 2]


def tables(results: list[Result]) -> str:
    groups = grouped(results)
    repeats = max(len(runs) for runs in groups.values()) if groups else 0
    lines = [
        "Per state answered, µs: worker CPU; Redis CPU (INFO cpu) over every node, its primaries and "
        "its replicas; the primaries' command time (INFO commandstats, a script's commands counted once)"
        + (f"; medians of {repeats} runs, states/s range in brackets" if repeats > 1 else "")
        + ".",
        f"{'scenario':<42} {'states/s':>9} {'worker':>7} {'redis':>7} {'prim':>6} {'repl':>6} "
        f"{'cmds':>6} {'batch':>6} {'ok':>3}  cpu % of one core: workers/redis/producers/collector"
        + ("  [states/s min-max]" if repeats > 1 else ""),
    ]
    for name, runs in groups.items():
        rate = _median(runs, lambda r: r.throughput) or 0.0
        spread = f"  [{min(r.throughput for r in runs):,.0f}-{max(r.throughput for r in runs):,.0f}]"
        lines.append(
            f"{name:<42} {rate:9,.0f} {_num(_median(runs, lambda r: r.worker_cpu_us), '7.1f')} "
            f"{_num(_median(runs, lambda r: r.redis_per_state.get('redis_cpu_us')), '7.1f')} "
            f"{_num(_median(runs, lambda r: r.redis_per_state.get('primary_cpu_us')), '6.1f')} "
            f"{_num(_median(runs, lambda r: r.redis_per_state.get('replica_cpu_us')), '6.1f')} "
            f"{_num(_median(runs, lambda r: r.redis_per_state.get('top_level_us')))} "
            f"{_median(runs, lambda r: r.mean_batch) or 0.0:6.1f} "
            f"{'yes' if all(r.exactly_once for r in runs) else 'NO':>3}  "
            f"{cpu_shares(representative(runs))}" + (spread if len(runs) > 1 else "")
        )
    lines += [
        "",
        "Redis command time per state on the primaries, µs (calls per state): EVALSHA includes the XADD "
        "of the result and the XACK it runs, which XADD and XACK count too.",
        f"{'scenario':<42} " + " ".join(f"{name.upper():>15}" for name in COMMANDS),
    ]
    for name, runs in groups.items():
        cells = []
        for command in COMMANDS:
            us = _median(runs, _figure(command, "us"))
            calls = _median(runs, _figure(command, "calls"))
            cells.append(
                f"{'-':>15}" if us is None or calls is None else f"{us:6.2f} ({calls:5.3f})".rjust(15)
            )
        lines.append(f"{name:<42} " + " ".join(cells))
    lines += [
        "",
        "Each node: port, shards held (a replica: its primary's), Redis CPU µs per state of those "
        "shards [% of one core].",
    ]
    for name, runs in groups.items():
        r = representative(runs)
        cells = []
        for n in r.redis_nodes:
            cpu = n["cpu_s"]
            share = f"{100 * cpu / r.wall_s:.0f}%" if cpu is not None and r.wall_s > 0 else "?"
            node = _port(n["node"])
            if n.get("replica_of"):
                node += f" (replica of {_port(n['replica_of'])})"
            if n["states"]:
                per = _num(1e6 * cpu / n["states"] if cpu is not None else None, ".1f")
                cells.append(f"{node} {n['shards']}: {per} [{share}]")
            else:
                cells.append(f"{node} idle [{share}]")
        lines.append(f"{name:<42} " + "; ".join(cells))
    return "\n".join(lines)


def _figure(command: str, what: str) -> Callable[[Result], float | None]:
    """A run's ``what`` (us or calls) per state of ``command``; None if it ran none."""

    def figure(r: Result) -> float | None:
        c = r.redis_per_state.get("commands", {}).get(command)
        return None if c is None else float(c[what])

    return figure
