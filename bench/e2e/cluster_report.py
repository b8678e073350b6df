"""The tables of ``python -m bench e2e --cluster N``: throughput and CPU per state
(workers, Redis over every node, command time), Redis's time per state by
command, and each node's CPU per state of the shards it holds."""

from __future__ import annotations

from bench.e2e.redis_stats import HOT
from bench.e2e.report import cpu_shares
from bench.e2e.result import Result


def _num(value: float | None, fmt: str = "6.1f") -> str:
    return "?" if value is None else format(value, fmt)


def _port(url: str) -> str:
    return url.rsplit(":", 1)[-1]


def tables(results: list[Result]) -> str:
    lines = [
        "Per state answered: worker CPU, Redis CPU (INFO cpu, every node), Redis command time "
        "(INFO commandstats, a script's commands counted once); µs.",
        f"{'scenario':<42} {'states/s':>9} {'worker':>7} {'redis':>7} {'cmds':>6} {'batch':>6} "
        f"{'ok':>3}  cpu % of one core: workers/redis/producers/collector",
    ]
    for r in results:
        ps = r.redis_per_state
        lines.append(
            f"{r.scenario.name:<42} {r.throughput:9,.0f} {_num(r.worker_cpu_us, '7.1f')} "
            f"{_num(ps.get('redis_cpu_us'), '7.1f')} {_num(ps.get('top_level_us'))} "
            f"{r.mean_batch:6.1f} {'yes' if r.exactly_once else 'NO':>3}  {cpu_shares(r)}"
        )
    lines += [
        "",
        "Redis command time per state, µs (calls per state): EVALSHA includes the XADD of the result "
        "and the XACK it runs, which XADD and XACK count too.",
        f"{'scenario':<42} " + " ".join(f"{name.upper():>14}" for name in (*HOT, "other")),
    ]
    for r in results:
        commands = r.redis_per_state.get("commands", {})
        cells = []
        for name in (*HOT, "other"):
            c = commands.get(name)
            cells.append(f"{'-':>14}" if c is None else f"{c['us']:6.2f} ({c['calls']:4.2f})".rjust(14))
        lines.append(f"{r.scenario.name:<42} " + " ".join(cells))
    lines += [
        "",
        "Each node: port, role, shards held: Redis CPU µs per state of its shards [% of one core].",
    ]
    for r in results:
        cells = []
        for n in r.redis_nodes:
            cpu = n["cpu_s"]
            share = f"{100 * cpu / r.wall_s:.0f}%" if cpu is not None and r.wall_s > 0 else "?"
            if n["states"]:
                us = _num(1e6 * cpu / n["states"] if cpu is not None else None, ".1f")
                cells.append(f"{_port(n['node'])} {n['shards']}: {us} [{share}]")
            else:
                role = "replica" if n["role"] == "replica" else "idle"
                cells.append(f"{_port(n['node'])} {role} [{share}]")
        lines.append(f"{r.scenario.name:<42} " + "; ".join(cells))
    return "\n".join(lines)
