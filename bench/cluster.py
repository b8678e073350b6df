"""A throwaway Redis Cluster of loopback ``redis-server`` nodes (bench.redis_process),
formed with ``redis-cli --cluster create``, waited for until every node agrees it
is healthy, a primary killable by PID for failover tests, all ended by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.redis_process import RedisProcess, TlsFiles, apply_acl, command, find_binary, poll_until

SlotMap = tuple[tuple[int, int, int], ...]  # (first slot, last slot, primary's port), sorted


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (CRC16 of its hash tag, as the server computes it)."""
    from redis.crc import key_slot as _key_slot

    return int(_key_slot(key.encode() if isinstance(key, str) else key))


def _parse_cluster_nodes(text: str) -> list[dict[str, Any]]:
    """CLUSTER NODES lines → dicts: id, port, flags, primary (id or None), slots [(a, b)]."""
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        address, flags = fields[1], set(fields[2].split(","))
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported: not owned yet
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            {
                "id": fields[0],
                "port": int(address.split("@")[0].rsplit(":", 1)[1]),
                "flags": flags,
                "primary": None if fields[3] == "-" else fields[3],
                "connected": fields[7] == "connected",
                "slots": slots,
            }
        )
    return nodes


class LocalRedisCluster:
    """A Redis Cluster of ``primaries`` × (1 + ``replicas``) loopback redis-servers.

    Formed with ``redis-cli --cluster create``; ready when every live node reports
    ``cluster_state:ok`` with all 16384 slots served, every node sees the same
    slot owners, and every replica's link to its primary is up. ``node_timeout_ms``
    is short so that a killed primary is replaced within a few seconds; replicas
    may always fail over (validity factor 0), since tests kill primaries on purpose.
    """

    def __init__(
        self,
        folder: Path,
        primaries: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 1000,
        tls: TlsFiles | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        started = time.monotonic()
        self.folder = folder
        self.tls = tls
        self.nodes: list[RedisProcess] = []
        self.last_failover_s: float | None = None
        self._taken: set[int] = set()
        args = [
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-allow-replica-migration",
            "no",
            # Redis 7 waits 5 s before a diskless full sync to batch replicas: not here.
            "--repl-diskless-sync-delay",
            "0",
            *extra_args,
        ]
        try:
            for index in range(primaries * (1 + replicas)):
                self.nodes.append(
                    RedisProcess(
                        folder / f"node{index}", args, tls=tls, cluster=True, taken_ports=self._taken
                    )
                )
            self._create(replicas, timeout)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started

    def _create(self, replicas: int, timeout: float) -> None:
        command = [find_binary("redis-cli")]
        if self.tls is not None:
            command += ["--tls", "--cacert", str(self.tls.ca)]
        command += ["--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes)]
        command += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
            )

    # -- looking at it -------------------------------------------------------------------

    @property
    def live_nodes(self) -> list[RedisProcess]:
        return [node for node in self.nodes if node.alive()]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.live_nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.live_nodes]

    @property
    def url(self) -> str:
        """One live node's URL (a cluster client discovers the rest from it)."""
        return self.live_nodes[0].url

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.cluster.RedisCluster`` (any live node; TLS CA if any)."""
        return self.live_nodes[0].client_kwargs()

    def slot_map(self, via: RedisProcess | None = None) -> SlotMap:
        """Slot ranges and their primary's port, as one node (default: the first live one) sees them."""
        node = via or self.live_nodes[0]
        table = _parse_cluster_nodes(command(node.admin(), "CLUSTER", "NODES"))
        return tuple(
            sorted(
                (first, last, entry["port"])
                for entry in table
                if "master" in entry["flags"] and "fail" not in entry["flags"]
                for first, last in entry["slots"]
            )
        )

    def primary_for(self, key_or_slot: str | bytes | int) -> RedisProcess:
        """The node that serves ``key_or_slot`` now."""
        slot = key_or_slot if isinstance(key_or_slot, int) else key_slot(key_or_slot)
        for first, last, port in self.slot_map():
            if first <= slot <= last:
                return self.node(port)
        raise LookupError(f"slot {slot} is not served by any primary")

    def primaries(self) -> list[RedisProcess]:
        return [self.node(port) for port in sorted({port for _, _, port in self.slot_map()})]

    def replicas_of(self, primary: RedisProcess) -> list[RedisProcess]:
        table = _parse_cluster_nodes(command(self.live_nodes[0].admin(), "CLUSTER", "NODES"))
        ids = {entry["port"]: entry["id"] for entry in table}
        return [
            self.node(entry["port"])
            for entry in table
            if entry["primary"] == ids[primary.port] and self.node(entry["port"]).alive()
        ]

    def apply_acl(self, rules: Sequence[str]) -> None:
        """``ACL SETUSER`` on every live node: ACLs are per node, never spread by the cluster bus."""
        for node in self.live_nodes:
            apply_acl(node.admin(), rules)

    # -- waiting ---------------------------------------------------------------------------

    def _roles(self, via: RedisProcess) -> tuple[tuple[int, int], ...]:
        """(port, its primary's port or 0) of every node not marked failed, as ``via`` sees them."""
        table = _parse_cluster_nodes(command(via.admin(), "CLUSTER", "NODES"))
        ports = {entry["id"]: entry["port"] for entry in table}
        return tuple(
            sorted(
                (entry["port"], ports.get(entry["primary"], -1) if entry["primary"] else 0)
                for entry in table
                if "fail" not in entry["flags"]
            )
        )

    def _healthy(self) -> bool:
        """Every live node: state ok, all slots ok, same live slot owners; the others replicas, link up."""
        try:
            views = set()
            for node in self.live_nodes:
                info = command(node.admin(), "CLUSTER", "INFO")
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return False
                # Gossip spreads a replica's new role late: all views must agree on it too.
                views.add((self.slot_map(node), self._roles(node)))
            if len(views) != 1:
                return False
            owners = {port for _, _, port in views.pop()[0]}
            if not all(self.node(port).alive() for port in owners):
                return False
            for node in self.live_nodes:
                if node.port in owners:
                    continue
                replication = node.admin().info("replication")
                if replication.get("role") != "slave" or replication.get("master_link_status") != "up":
                    return False
            return True
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, StopIteration):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until the cluster is healthy (see the class docstring)."""
        try:
            poll_until(self._healthy, timeout, "the cluster to be ready", 0.05)
        except TimeoutError as exc:
            tails = "\n".join(f"--- node {n.port}:\n{n.log_tail(800)}" for n in self.nodes)
            raise TimeoutError(f"{exc}\n{tails}") from None

    def kill_primary(self, key_or_slot: str | bytes | int, timeout: float = 30.0) -> RedisProcess:
        """SIGKILL the primary serving ``key_or_slot`` by PID; wait for its replica to take over.

        Returns the new primary; ``last_failover_s`` holds the seconds from the kill
        to a healthy cluster with the slot served by another node.
        """
        old = self.primary_for(key_or_slot)
        if not self.replicas_of(old):
            raise RuntimeError(f"primary on port {old.port} has no live replica to promote")
        killed = time.monotonic()
        old.kill()

        def moved() -> bool:
            try:
                return self.primary_for(key_or_slot) is not old and self._healthy()
            except (LookupError, redis.ConnectionError, redis.TimeoutError, StopIteration):
                return False

        poll_until(moved, timeout, f"a replica to replace the primary on port {old.port}", 0.05)
        self.last_failover_s = time.monotonic() - killed
        return self.primary_for(key_or_slot)

    def __enter__(self) -> LocalRedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End every server this cluster started, by PID (SIGTERM all, then reap)."""
        for node in self.nodes:
            if node.alive():
                os.kill(node.pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()
