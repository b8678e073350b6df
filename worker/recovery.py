"""Recovery: find entries that other workers (or this one, before a restart)
read but never answered (XAUTOCLAIM, through worker/reads.py's script: ids first,
payloads bounded), count their deliveries (XPENDING), and turn entries delivered
MAX_DELIVERIES times into ``internal`` answers with a dead letter, so nothing loops
forever; over every stream of the consume loop (shared and per strategy). It only
finds and decides; the consume loop answers, through the one answer point."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from redis.exceptions import ResponseError

from worker.protocol import GONE, Limits, Request, as_text, decode_entry
from worker.reads import CLAIM_LUA, Read, parse_claim, read_args
from worker.shards import Streams
from worker.state import ServerState

logger = logging.getLogger(__name__)

MAX_CLAIM_ROUNDS = 100  # per pass; a pass stops early when the PEL has been scanned

# Remove a consumer from the group only if it holds no pending entry, atomically:
# XGROUP DELCONSUMER drops the consumer's pending entries, which would lose them.
FORGET_LUA = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


class Recovery:
    def __init__(self, state: ServerState, streams: Streams | None = None) -> None:
        self.state = state
        self.s = state.settings
        self.streams = streams or state.streams
        self._forget = state.redis.register_script(FORGET_LUA)
        self._claim = state.redis.register_script(CLAIM_LUA)
        self.keys = [src.states for src in self.streams.sources]

    async def forget(self, consumer: str) -> bool:
        """Remove ``consumer`` from the group of every stream where it holds nothing pending;
        whether it is gone from all of them."""
        gone = True
        for key in self.keys:
            removed = await self._forget(keys=[key], args=[self.s.group, consumer])
            gone = gone and int(removed) >= 0
        return gone

    async def forget_departed(self) -> list[str]:
        """Remove consumers that hold nothing, have not read for CLAIM_IDLE_MS and have no
        heartbeat: workers that stopped without leaving (killed, or exited while holding
        entries that were claimed since). The heartbeat is what tells a live worker: on
        Redis 7.0 a blocked read that finds nothing does not reset a consumer's idle time,
        so a live worker on a quiet stream looks idle. Were one removed anyway, Redis
        would re-add it on its next read."""
        gone: list[str] = []
        for key in self.keys:
            gone += await self._forget_departed(key)
        if gone:
            logger.info("removed %d departed consumer(s) from the group: %s", len(gone), ", ".join(gone[:5]))
        return gone

    async def _forget_departed(self, key: str) -> list[str]:
        redis, s = self.state.redis, self.s
        try:
            consumers: list[dict[str, Any]] = await redis.xinfo_consumers(key, s.group)
        except ResponseError as exc:
            if "no such key" not in str(exc):
                raise
            # The stream vanished (DEL, FLUSHALL) since this pass began: nobody to forget. The
            # loop's next read gets NOGROUP and recreates stream and group (XINFO says "no such key").
            return []
        gone = []
        for c in consumers:
            name = as_text(c["name"])
            idle = name != s.consumer and int(c["pending"]) == 0 and int(c["idle"]) > s.claim_idle_ms
            if not idle or await redis.exists(f"{s.heartbeat_prefix}{name}"):
                continue
            removed = await self._forget(keys=[key], args=[s.group, name])
            if int(removed) >= 0:
                gone.append(name)
        return gone

    async def trim_answered(self) -> None:
        """Trim each states stream of what every group is done with (XTRIM MINID ~): the
        entries before the oldest one a group still needs — its oldest pending entry,
        or, with none pending, its last delivered one (everything after that it has not
        read yet). Without it the states stream only grows. Approximate, so Redis trims
        whole macro-nodes cheaply; never an entry a group has not acknowledged."""
        for key in self.keys:
            await self._trim(key)

    async def _trim(self, stream: str) -> None:
        redis = self.state.redis
        keep: tuple[int, int] | None = None
        try:
            groups = await redis.xinfo_groups(stream)
        except ResponseError as exc:
            if "no such key" in str(exc) and stream != self.streams.states:
                return  # a strategy that has not sent anything yet
            raise
        for group in groups:
            first = group["last-delivered-id"]
            if int(group["pending"]):
                # Read one round trip later: all may have been acknowledged since (min None).
                oldest = (await redis.xpending(stream, group["name"]))["min"]
                first = oldest if oldest is not None else first
            text = as_text(first)
            ms, _, seq = text.partition("-")
            at = (int(ms), int(seq or 0))
            keep = at if keep is None else min(keep, at)
        if keep is not None and keep > (0, 0):
            await redis.xtrim(stream, minid=f"{keep[0]}-{keep[1]}", approximate=True)

    async def delivery_counts(self, read: Read) -> dict[bytes, int]:
        """How often each of our pending entries of ``read`` has been delivered (XPENDING)."""
        by_source: dict[int, list[bytes]] = {}
        for (entry_id, _), source in zip(read.entries, read.sources, strict=True):
            by_source.setdefault(source, []).append(entry_id)
        counts: dict[bytes, int] = {}
        for source, ids in by_source.items():
            rows = await self.state.redis.xpending_range(
                self.keys[source],
                self.s.group,
                min=ids[0],
                max=ids[-1],
                count=2 * len(ids) + 100,
                consumername=self.s.consumer,
            )
            counts.update({cast(bytes, row["message_id"]): int(row["times_delivered"]) for row in rows})
        return counts

    async def claim(self) -> AsyncIterator[tuple[Read, dict[bytes, int]]]:
        """Take over entries idle longer than CLAIM_IDLE_MS (any consumer's, ours
        too), a batch at a time, for the caller to answer: each with its delivery count
        (one higher for the claim), payloads bounded like any read's."""
        total = 0
        for source, key in enumerate(self.keys):
            start: bytes | str = "0-0"
            for _ in range(MAX_CLAIM_ROUNDS):
                try:
                    reply = await self._claim(
                        keys=[key],
                        args=[
                            *read_args(self.s.max_field_bytes, "claim"),
                            self.s.group,
                            self.s.consumer,
                            self.s.claim_idle_ms,
                            start,
                            self.s.read_count,
                        ],
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc) and source > 0:
                        break  # a strategy stream the loop has not created yet
                    raise
                got = parse_claim(reply, source)
                read = got.read
                # Redis drops ids whose payload was deleted from the PEL; answer them all the same.
                for entry_id in got.gone:
                    read.add(source, entry_id, GONE)
                # Claimed but over the read's budget: ours now, read by id by the loop next.
                claimed = len(read) + sum(len(ids) for ids in read.deferred.values())
                if claimed:
                    total += claimed
                    self.state.stats.reclaimed += claimed
                    yield read, got.counts
                if got.next_id in (b"0-0", "0-0"):
                    break
                start = got.next_id
        if total:
            logger.info(
                "reclaimed %d %s idle for more than %d ms",
                total,
                "entry" if total == 1 else "entries",
                self.s.claim_idle_ms,
            )


def split_poison(read: Read, counts: dict[bytes, int], max_deliveries: int) -> tuple[Read, Read]:
    """(poison, rest): poison entries have been delivered ``max_deliveries`` times."""
    poison = [i for i, (eid, _) in enumerate(read.entries) if counts.get(eid, 0) >= max_deliveries]
    if not poison:
        return Read(), read
    chosen = set(poison)
    rest = read.take([i for i in range(len(read)) if i not in chosen])
    rest.deferred = read.deferred
    return read.take(poison), rest


def poison_requests(
    read: Read, counts: dict[bytes, int], max_deliveries: int, now_ms: float, limits: list[Limits]
) -> list[Request]:
    """Each poison entry's ``internal`` answer, addressed as the entry asked if
    its envelope can be read at all (decoding may be what fails on it)."""
    reqs = []
    for (eid, fields), source in zip(read.entries, read.sources, strict=True):
        req = _envelope(eid, fields, now_ms, limits[source])
        req.source = source
        req.fail(
            "internal",
            f"processing failed on each of {counts.get(eid, 0)} deliveries "
            f"(MAX_DELIVERIES={max_deliveries}); the entry was dead-lettered",
        )
        reqs.append(req)
    logger.warning(
        "dead-lettering %d poison entr%s after %d deliveries: %s",
        len(read),
        "y" if len(read) == 1 else "ies",
        max_deliveries,
        ", ".join(eid.decode() for eid, _ in read.entries[:5]),
    )
    return reqs


def _envelope(eid: bytes, fields: dict[bytes, bytes], now_ms: float, limits: Limits) -> Request:
    try:
        # Its id, reply_to and pair as far as they could be read (decoding the rest may be
        # what fails on it: those keep their defaults then).
        return decode_entry(eid, fields, None, now_ms, limits)
    except Exception:  # noqa: BLE001 - the entry is poison; fall back to the defaults
        pass
    text = eid.decode("ascii")
    return Request(entry_id=text, id=text, reply_to=limits.default_stream)
