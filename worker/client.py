"""The client strategies use: send states, get typed actions back.

The shortest correct use of the protocol::

    async with ActionClient("redis://127.0.0.1:6379/0") as client:
        action = await client.act(state, pair="KO/PEP")   # 28 floats
        print(action.action, action.discrete, action.model_sha256)

Each client has its own reply stream (``statpair:actions:<uuid>``, sent as
``reply_to``), matches results to requests by its own ``id``, raises
``ActionError`` (with the worker's ``error`` code and ``detail``) for an error
result and ``TimeoutError`` when no answer comes in time, and deletes its
reply stream on close. On a Redis Cluster (``cluster=True, shards=N``, as the
workers' REDIS_CLUSTER and SHARDS) each state goes to its pair's shard and the
client keeps a reply stream per shard it uses, under that shard's hash tag.
With ``durable=True`` a state is sent again until a replica has it too
(``WAIT``), so a failover of its primary cannot lose it. With
``strategy="name"`` (one of the workers' STRATEGIES) the client sends to that
strategy's own stream and reads under its own reply prefix, what an ACL user per
strategy allows (docs/operations.md). A state larger than the workers take
(``max_field_bytes``, their MAX_FIELD_BYTES) is refused before it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import numpy as np
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from worker.connection import Client, redis_client, xread
from worker.protocol import SHARDS_FIELD, Result, encode_state, parse_result
from worker.retry import TRANSIENT, Backoff, retrying
from worker.shards import Streams, shard_of, strategy_keys

logger = logging.getLogger(__name__)


UNREPLICATED_TRIES = 3  # durable mode: WAITs that no replica acknowledged before giving up


class NotReplicated(Exception):
    """Durable mode: no replica acknowledged a state; it is in the primary only."""


class ActionError(Exception):
    """The worker answered with an error: ``code`` is one of the protocol's error codes."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.code = result.error or "internal"
        self.detail = result.detail or ""
        super().__init__(f"{self.code}: {self.detail}")


class _Waiter:
    """The answers one call waits for (one for ``act``, n for ``act_many``): the
    reply reader fills them in and resolves one future when the last arrives
    (n futures and a gather cost ~0.3 ms of client CPU for 16 states)."""

    __slots__ = ("future", "left", "results")

    def __init__(self, n: int) -> None:
        self.results: list[Result | None] = [None] * n
        self.left = n
        self.future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()

    def answer(self, index: int, result: Result) -> None:
        if self.results[index] is None:
            self.results[index] = result
            self.left -= 1
            if self.left == 0 and not self.future.done():
                self.future.set_result(cast(list[Result], self.results))  # all filled now

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass
class _Replies:
    """One reply stream (one per shard used) and where its reader is."""

    stream: str
    last: bytes = b"0-0"
    since_trim: int = 0
    reader: asyncio.Task[None] | None = None


class ActionClient:
    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        *,
        states_stream: str = "statpair:states",
        reply_prefix: str = "statpair:actions:",
        timeout: float = 5.0,
        ttl_ms: int | None = None,
        redis: Client | None = None,
        block_ms: int = 1000,
        cluster: bool = False,
        shards: int = 1,
        durable: bool = False,
        wait_ms: int = 200,
        ca_file: str | None = None,
        contracts_key: str = "statpair:contracts",
        strategy: str | None = None,
        max_field_bytes: int = 16_384,
    ) -> None:
        if strategy is not None:  # its own states stream and reply namespace (the workers' STRATEGIES)
            states_stream, reply_prefix, _ = strategy_keys(states_stream, reply_prefix, strategy)
        self.strategy = strategy
        self.max_field_bytes = max_field_bytes  # the workers' MAX_FIELD_BYTES: larger is refused here
        self._owns_redis = redis is None
        if redis is None:
            extra: dict[str, Any] = {"max_connections": 1024} if cluster else {}
            redis = redis_client(
                redis_url,
                cluster=cluster,
                ca_file=Path(ca_file) if ca_file else None,
                decode_responses=False,
                **extra,
            )
        self.redis: Client = redis
        self.cluster = isinstance(redis, RedisCluster)
        if shards != 1 and not self.cluster:
            raise ValueError(f"shards={shards} needs a Redis Cluster (cluster=True): one Redis is one shard")
        self.shards = shards
        self.token = uuid.uuid4().hex[:12]
        self._streams = [
            Streams.of(s, self.shards, states_stream, "", "", reply_prefix, self.cluster)
            for s in range(self.shards)
        ]
        self._replies: dict[int, _Replies] = {}
        self.timeout = timeout
        self.ttl_ms = ttl_ms
        self.block_ms = block_ms
        self.durable = durable
        self.wait_ms = wait_ms
        self.contracts_key = contracts_key  # the workers' CONTRACTS_KEY: where they say their SHARDS
        self.resent = 0  # durable mode: states sent again (no replica had them in time, or a failover)
        self._ids = itertools.count()
        # request id → its call, its index in the call, its shard
        self._waiting: dict[bytes, tuple[_Waiter, int, int]] = {}
        self._closed = asyncio.Event()
        self._discovered = not self.cluster

    async def _discover(self) -> None:
        """A cluster client learns which node holds which slot before its first command
        (reads go straight to a stream's node; concurrent first calls can race, redis-py#3935)."""
        if not self._discovered and isinstance(self.redis, RedisCluster):
            await self.redis.initialize()
            (theirs,) = await self.redis.hmget(self.contracts_key, SHARDS_FIELD)
            if theirs is not None and int(theirs) != self.shards:
                raise ValueError(
                    f"the workers shard the streams into {int(theirs)} (SHARDS), this client into "
                    f"{self.shards}: its states would go where no worker reads; "
                    f"use ActionClient(..., cluster=True, shards={int(theirs)})"
                )
            self._discovered = True

    @property
    def reply_stream(self) -> str:
        """The reply stream of shard 0 (unsharded: the only one)."""
        return self._reply(0).stream

    async def __aenter__(self) -> ActionClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _reply(self, shard: int) -> _Replies:
        r = self._replies.get(shard)
        if r is None:
            r = self._replies[shard] = _Replies(f"{self._streams[shard].reply_prefix}{self.token}")
        return r

    def _fields(
        self,
        state: Sequence[float] | np.ndarray,
        pair: str | None,
        cid: str,
        contract: str | None,
        reply: _Replies,
    ) -> dict[FieldT, EncodableT]:
        fields: dict[FieldT, EncodableT] = {"id": cid, "reply_to": reply.stream}
        encoded = encode_state(state)
        size = len(encoded["state_f32"])
        if size > self.max_field_bytes:
            raise ValueError(
                f"a state of {size // 4} values ({size} bytes) is larger than the workers take "
                f"(MAX_FIELD_BYTES {self.max_field_bytes}): not sent"
            )
        fields.update(encoded)
        if pair is not None:
            fields["pair"] = pair
        if contract is not None:
            fields["contract"] = contract
        if self.ttl_ms is not None:
            fields["ttl_ms"] = str(self.ttl_ms)
        return fields

    def _register(self, shard: int, waiter: _Waiter, index: int) -> str:
        cid = f"{self.token}-{next(self._ids)}"
        self._waiting[cid.encode()] = (waiter, index, shard)
        reply = self._reply(shard)
        if reply.reader is None or reply.reader.done():
            reply.reader = asyncio.create_task(
                self._read_replies(reply, shard), name=f"replies-{reply.stream}"
            )
        return cid

    async def act(
        self, state: Sequence[float] | np.ndarray, pair: str | None = None, contract: str | None = None
    ) -> Result:
        """One state → its action; raises ``ActionError`` or ``TimeoutError``. With
        ``contract`` (the id of the contract the state was built for), a worker
        serving another contract answers ``contract_mismatch`` instead of acting."""
        await self._discover()
        shard = shard_of(pair, self.shards)
        waiter = _Waiter(1)
        cid = self._register(shard, waiter, 0)
        try:
            fields = self._fields(state, pair, cid, contract, self._reply(shard))
            async with asyncio.timeout(self.timeout):
                if self.durable:
                    await self._send_durably(shard, [fields])
                else:
                    await self.redis.xadd(self._streams[shard].states, fields)
                (result,) = await waiter.future
        finally:
            self._waiting.pop(cid.encode(), None)
        if result.status != "ok":
            raise ActionError(result)
        return result

    async def act_many(
        self,
        states: Sequence[Sequence[float]] | np.ndarray,
        pairs: Sequence[str | None] | None = None,
        contracts: Sequence[str | None] | None = None,
    ) -> list[Result | ActionError]:
        """Many states in one round trip (per shard); one ``Result`` or ``ActionError``
        each, in order.

        The XADDs of a shard go as one MULTI/EXEC: a worker blocked on the stream is
        woken once they are all in, and reads them as one batch (a plain pipeline
        woke it on the first, which it then answered alone). Raises ``TimeoutError``
        if any answer is missing after ``timeout``."""
        await self._discover()
        pairs = list(pairs) if pairs is not None else [None] * len(states)
        contracts = list(contracts) if contracts is not None else [None] * len(states)
        if not len(states) == len(pairs) == len(contracts):
            raise ValueError(
                f"{len(states)} states, {len(pairs)} pairs and {len(contracts)} contracts differ"
            )
        shards = [shard_of(p, self.shards) for p in pairs]
        waiter = _Waiter(len(shards))
        registered: list[str] = []
        try:
            by_shard: dict[int, list[dict[FieldT, EncodableT]]] = {}
            for i, (state, pair, contract, shard) in enumerate(
                zip(states, pairs, contracts, shards, strict=True)
            ):
                cid = self._register(shard, waiter, i)
                registered.append(cid)
                by_shard.setdefault(shard, []).append(
                    self._fields(state, pair, cid, contract, self._reply(shard))
                )
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(*(self._send_many(shard, f) for shard, f in by_shard.items()))
                results = await waiter.future if registered else []
        finally:
            for cid in registered:
                self._waiting.pop(cid.encode(), None)
        return [r if r.status == "ok" else ActionError(r) for r in results]

    async def _send_many(self, shard: int, entries: list[dict[FieldT, EncodableT]]) -> None:
        if self.durable:
            await self._send_durably(shard, entries)
            return
        pipe = self.redis.pipeline(transaction=True)  # one shard, one slot: MULTI/EXEC on a cluster too
        for fields in entries:
            pipe.xadd(self._streams[shard].states, fields)
        await pipe.execute()

    async def _send_durably(self, shard: int, entries: list[dict[FieldT, EncodableT]]) -> None:
        """XADD, then WAIT for one replica on the same connection (a pipeline to the
        stream's node). Sent again after a connection error or failover (until the
        caller's timeout), or when no replica acknowledged in time; after
        ``UNREPLICATED_TRIES`` of those, ``NotReplicated`` is raised: the stream's
        primary has no replica in sync (after a failover, until one is added), and a
        state it holds would be lost with it. A state sent twice is answered twice:
        the second answer finds no one waiting."""
        stream = self._streams[shard].states
        backoff = Backoff(base=0.05, cap=1.0)
        unreplicated = 0
        while True:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for fields in entries:
                    pipe.xadd(stream, fields)
                if isinstance(self.redis, RedisCluster):
                    node = self.redis.get_node_from_key(stream)
                    pipe.execute_command("WAIT", 1, self.wait_ms, target_nodes=node)
                else:
                    pipe.execute_command("WAIT", 1, self.wait_ms)
                replies = await pipe.execute()
                if int(replies[-1]) >= 1:
                    return
                unreplicated += 1
                why = f"no replica acknowledged within {self.wait_ms} ms"
                if unreplicated >= UNREPLICATED_TRIES:
                    raise NotReplicated(
                        f"{stream}: {why}, {unreplicated} times: its primary has no replica in sync"
                    )
            except TRANSIENT as exc:
                why = f"{type(exc).__name__}: {exc}"
            self.resent += len(entries)
            logger.warning("sending %d state(s) to %s again: %s", len(entries), stream, why)
            await asyncio.sleep(backoff.next_delay())

    async def _read_replies(self, reply: _Replies, shard: int) -> None:
        """Read one shard's reply stream while calls wait. Connection errors are retried
        (callers time out on their own); any other error (an ACL that denies the reply
        stream, a cluster's MOVED to a client not in cluster mode) fails the calls waiting
        on this shard at once, with that error, instead of leaving them to time out."""
        try:
            await self._read_replies_until_done(reply)
        except Exception as exc:  # noqa: BLE001 - handed to every caller waiting on this stream
            if "MOVED" in str(exc) and not self.cluster:
                exc = ResponseError(f"{exc}: the Redis is a cluster: use ActionClient(..., cluster=True)")
            logger.warning("reading %s failed: %s", reply.stream, exc)
            for waiter, _, where in list(self._waiting.values()):
                if where == shard:
                    waiter.fail(exc)

    async def _read_replies_until_done(self, reply: _Replies) -> None:
        while self._waiting and not self._closed.is_set():
            resp = await retrying(
                lambda: xread(self.redis, reply.stream, reply.last, 1000, self.block_ms),
                self._closed,
                "reading replies",
            )
            for eid, fields in resp[0][1] if resp else []:
                reply.last = eid
                waiting = self._waiting.pop(fields.get(b"id", b""), None)
                if waiting is not None:  # else: late, or a second answer to a state sent twice
                    try:
                        waiting[0].answer(waiting[1], parse_result(fields))
                    except Exception as exc:  # noqa: BLE001 - a malformed reply: its caller is told
                        waiting[0].fail(exc)
                reply.since_trim += 1
            if reply.since_trim >= 1000:  # keep our reply stream short (best effort)
                reply.since_trim = 0
                try:
                    await self.redis.xtrim(reply.stream, minid=reply.last.decode(), approximate=True)
                except TRANSIENT as exc:
                    logger.debug("reply stream %s not trimmed this time: %s", reply.stream, exc)

    async def close(self) -> None:
        """Stop reading and delete the reply streams."""
        self._closed.set()
        for reply in self._replies.values():
            if reply.reader is not None:
                reply.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reply.reader
            with contextlib.suppress(Exception):
                await self.redis.delete(reply.stream)
        if self._owns_redis:
            await self.redis.aclose()
