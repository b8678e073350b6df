"""The client strategies use: send states, get typed actions back.

The shortest correct use of the protocol::

    async with ActionClient("redis://127.0.0.1:6379/0") as client:
        action = await client.act(state, pair="KO/PEP")   # 28 floats
        print(action.action, action.discrete, action.model_sha256)

Each client has its own reply stream (``statpair:actions:<uuid>``, sent as
``reply_to``), matches results to requests by its own ``id``, raises
``ActionError`` (with the worker's ``error`` code and ``detail``) for an error
result and ``TimeoutError`` when no answer comes in time, and deletes its
reply stream on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from worker.protocol import Result, encode_state, parse_result
from worker.retry import retrying

logger = logging.getLogger(__name__)


class ActionError(Exception):
    """The worker answered with an error: ``code`` is one of the protocol's error codes."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.code = result.error or "internal"
        self.detail = result.detail or ""
        super().__init__(f"{self.code}: {self.detail}")


class ActionClient:
    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        *,
        states_stream: str = "statpair:states",
        reply_prefix: str = "statpair:actions:",
        timeout: float = 5.0,
        ttl_ms: int | None = None,
        redis: Redis | None = None,
        block_ms: int = 1000,
    ) -> None:
        self._owns_redis = redis is None
        self.redis = redis if redis is not None else Redis.from_url(redis_url, decode_responses=False)
        self.states_stream = states_stream
        self.token = uuid.uuid4().hex[:12]
        self.reply_stream = f"{reply_prefix}{self.token}"
        self.timeout = timeout
        self.ttl_ms = ttl_ms
        self.block_ms = block_ms
        self._ids = itertools.count()
        self._waiting: dict[bytes, asyncio.Future[Result]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._last = b"0-0"
        self._since_trim = 0
        self._closed = asyncio.Event()

    async def __aenter__(self) -> ActionClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _fields(
        self, state: Sequence[float] | np.ndarray, pair: str | None, cid: str, contract: str | None = None
    ) -> dict[FieldT, EncodableT]:
        fields: dict[FieldT, EncodableT] = {"id": cid, "reply_to": self.reply_stream}
        fields.update(encode_state(state))
        if pair is not None:
            fields["pair"] = pair
        if contract is not None:
            fields["contract"] = contract
        if self.ttl_ms is not None:
            fields["ttl_ms"] = str(self.ttl_ms)
        return fields

    def _register(self) -> tuple[str, asyncio.Future[Result]]:
        cid = f"{self.token}-{next(self._ids)}"
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[cid.encode()] = fut
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_replies(), name=f"replies-{self.token}")
        return cid, fut

    async def act(
        self, state: Sequence[float] | np.ndarray, pair: str | None = None, contract: str | None = None
    ) -> Result:
        """One state → its action; raises ``ActionError`` or ``TimeoutError``. With
        ``contract`` (the id of the contract the state was built for), a worker
        serving another contract answers ``contract_mismatch`` instead of acting."""
        cid, fut = self._register()
        try:
            await self.redis.xadd(self.states_stream, self._fields(state, pair, cid, contract))
            result = await asyncio.wait_for(fut, self.timeout)
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
        """Many states in one round trip; one ``Result`` or ``ActionError`` each, in order.

        The XADDs go as one MULTI/EXEC: a worker blocked on the stream is woken once
        they are all in, and reads them as one batch (a plain pipeline woke it on the
        first, which it then answered alone). Raises ``TimeoutError`` if any answer is
        missing after ``timeout``."""
        pairs = list(pairs) if pairs is not None else [None] * len(states)
        contracts = list(contracts) if contracts is not None else [None] * len(states)
        registered = [self._register() for _ in range(len(states))]
        try:
            pipe = self.redis.pipeline(transaction=True)
            for (cid, _), state, pair, contract in zip(registered, states, pairs, contracts, strict=True):
                pipe.xadd(self.states_stream, self._fields(state, pair, cid, contract))
            await pipe.execute()
            results = await asyncio.wait_for(asyncio.gather(*(f for _, f in registered)), self.timeout)
        finally:
            for cid, _ in registered:
                self._waiting.pop(cid.encode(), None)
        return [r if r.status == "ok" else ActionError(r) for r in results]

    async def _read_replies(self) -> None:
        # Callers time out on their own; the reader retries until no one waits.
        while self._waiting:
            resp = await retrying(self._read_once, self._closed, "reading replies")
            for eid, fields in resp[0][1] if resp else []:
                self._last = eid
                fut = self._waiting.get(fields.get(b"id", b""))
                if fut is not None and not fut.done():
                    fut.set_result(parse_result(fields))
                self._since_trim += 1
            if self._since_trim >= 1000:  # keep our reply stream short
                self._since_trim = 0
                await self.redis.xtrim(self.reply_stream, minid=self._last.decode(), approximate=True)

    async def _read_once(self) -> Any:
        return await self.redis.xread({self.reply_stream: self._last}, count=1000, block=self.block_ms)

    async def close(self) -> None:
        """Stop reading and delete the reply stream."""
        self._closed.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):
            await self.redis.delete(self.reply_stream)
        if self._owns_redis:
            await self.redis.aclose()
