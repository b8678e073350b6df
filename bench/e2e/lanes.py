"""Where a scenario's states go and its results come back. A lane is one shard:
its states stream, its results stream and the node holding both (named as
worker/shards.py names them). On a single Redis there is one lane. The pairs
the producer sends are chosen so that every shard gets the same share, and each
pair's states go to its shard's stream, by ``worker.shards.shard_of``."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis

from bench.e2e.producer import Route
from bench.e2e.scenarios import Scenario
from bench.e2e.workers import Keys
from worker.shards import Streams, shard_of


@dataclass(frozen=True)
class Lane:
    shard: int
    states: str
    results: str
    node: str  # URL of the primary that holds the shard's slot


def pair_labels(shards: int, count: int) -> list[str]:
    """``count`` pair labels whose k-th is on shard ``k % shards``: states sent
    round the list go round the shards, each getting the same share."""
    per = -(-count // shards)
    by_shard: list[list[str]] = [[] for _ in range(shards)]
    for i in range(200 * per * shards + 1000):  # CRC32 spreads labels evenly: ~per*shards tries
        if min(len(b) for b in by_shard) >= per:
            break
        label = f"P{i}/Q{i}"
        bucket = by_shard[shard_of(label, shards)]
        if len(bucket) < per:
            bucket.append(label)
    else:
        raise AssertionError(f"could not find {per} pair labels for each of {shards} shards")
    return [by_shard[k % shards][k // shards] for k in range(count)]


class Topology:
    """One scenario's view of its Redis: an admin client (a cluster client on a
    cluster: it routes every key), a plain client per node (primaries and
    replicas) for reads and INFO, and the lanes. A context manager that closes
    every client."""

    def __init__(self, url: str, keys: Keys, sc: Scenario) -> None:
        self.url, self.keys, self.sc = url, keys, sc
        self.admin: redis.Redis | redis.RedisCluster
        self.roles: dict[str, str] = {}  # node URL → "primary" or "replica"
        self.primary_of: dict[str, str] = {}  # replica URL → its primary's
        if sc.cluster:
            cluster = redis.RedisCluster.from_url(url)
            self.admin = cluster
            # CLUSTER NODES, not the client's view: CLUSTER SLOTS, which the client
            # learns from, leaves out a replica that has not replicated anything yet.
            table: dict[str, dict[str, Any]] = cluster.cluster_nodes()
            address = {v["node_id"]: f"redis://{k}" for k, v in table.items()}
            for k, v in table.items():
                flags = str(v["flags"]).split(",")
                if "fail" in flags or (not v["connected"] and "myself" not in flags):
                    continue
                replica = "slave" in flags
                self.roles[f"redis://{k}"] = "replica" if replica else "primary"
                if replica:
                    self.primary_of[f"redis://{k}"] = address[v["master_id"]]
            self.lanes = []
            for shard in range(sc.shards):
                streams = Streams.of(
                    shard, sc.shards, keys.states, keys.actions, keys.dead, keys.reply_prefix, True
                )
                node = cluster.get_node_from_key(streams.states)
                self.lanes.append(
                    Lane(shard, streams.states, streams.results, f"redis://{node.host}:{node.port}")
                )
        else:
            self.admin = redis.Redis.from_url(url)
            self.roles[url] = "primary"
            self.lanes = [Lane(0, keys.states, keys.actions, url)]
        self.nodes = {u: redis.Redis.from_url(u) for u in self.roles}

    def client(self, lane: Lane) -> redis.Redis:
        """A plain client to the lane's node (XREAD through a cluster client would ask
        a node for its keys first: COMMAND GETKEYS, see docs/performance.md)."""
        return self.nodes[lane.node]

    def routes(self) -> list[Route]:
        """What the producer sends along: no pair on one lane without pairs, else
        each pair to its shard's lane."""
        if not self.sc.pairs:
            return [Route(self.lanes[0].node, self.lanes[0].states)]
        shards = self.sc.shards if self.sc.cluster else 1
        out = []
        for pair in pair_labels(max(shards, 1), self.sc.pairs):
            lane = self.lanes[shard_of(pair, shards)]
            out.append(Route(lane.node, lane.states, pair))
        return out

    def shards_of(self, node: str) -> list[int]:
        return [lane.shard for lane in self.lanes if lane.node == node]

    def close(self) -> None:
        for client in self.nodes.values():
            client.close()
        self.admin.close()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
