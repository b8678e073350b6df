"""Recovery: find entries that other workers (or this one, before a restart)
read but never answered (XAUTOCLAIM), count their deliveries (XPENDING), and
turn entries delivered MAX_DELIVERIES times into ``internal`` answers with a
dead letter, so nothing loops forever. It only finds and decides; the consume
loop answers, through the one answer point."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from redis.exceptions import ResponseError

from worker.protocol import GONE, Entries, Limits, Request, as_text, decode_entry
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

    async def forget(self, consumer: str) -> bool:
        """Remove ``consumer`` from the group if it holds nothing pending."""
        removed = await self._forget(keys=[self.streams.states], args=[self.s.group, consumer])
        return int(removed) >= 0

    async def forget_departed(self) -> list[str]:
        """Remove consumers that hold nothing, have not read for CLAIM_IDLE_MS and have no
        heartbeat: workers that stopped without leaving (killed, or exited while holding
        entries that were claimed since). The heartbeat is what tells a live worker: on
        Redis 7.0 a blocked read that finds nothing does not reset a consumer's idle time,
        so a live worker on a quiet stream looks idle. Were one removed anyway, Redis
        would re-add it on its next read."""
        redis, s = self.state.redis, self.s
        try:
            consumers: list[dict[str, Any]] = await redis.xinfo_consumers(self.streams.states, s.group)
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
            if await self.forget(name):
                gone.append(name)
        if gone:
            logger.info("removed %d departed consumer(s) from the group: %s", len(gone), ", ".join(gone[:5]))
        return gone

    async def trim_answered(self) -> None:
        """Trim the states stream of what every group is done with (XTRIM MINID ~): the
        entries before the oldest one a group still needs — its oldest pending entry,
        or, with none pending, its last delivered one (everything after that it has not
        read yet). Without it the states stream only grows. Approximate, so Redis trims
        whole macro-nodes cheaply; never an entry a group has not acknowledged."""
        redis, stream = self.state.redis, self.streams.states
        keep: tuple[int, int] | None = None
        for group in await redis.xinfo_groups(stream):
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

    async def delivery_counts(self, entries: Entries) -> dict[bytes, int]:
        """How often each of our pending entries has been delivered (XPENDING)."""
        ids = [eid for eid, _ in entries]
        rows = await self.state.redis.xpending_range(
            self.streams.states,
            self.s.group,
            min=ids[0],
            max=ids[-1],
            count=2 * len(ids) + 100,
            consumername=self.s.consumer,
        )
        return {cast(bytes, row["message_id"]): int(row["times_delivered"]) for row in rows}

    async def claim(self) -> AsyncIterator[Entries]:
        """Take over entries idle longer than CLAIM_IDLE_MS (any consumer's, ours
        too), a batch at a time, for the caller to answer."""
        start: bytes | str = "0-0"
        total = 0
        for _ in range(MAX_CLAIM_ROUNDS):
            next_id, claimed, deleted_ids = await self.state.redis.xautoclaim(
                self.streams.states,
                self.s.group,
                self.s.consumer,
                min_idle_time=self.s.claim_idle_ms,
                start_id=start,
                count=self.s.read_count,
            )
            # Redis drops ids whose payload was deleted from the PEL; answer them all the same.
            entries: Entries = list(claimed) + [(eid, GONE) for eid in deleted_ids or []]
            if entries:
                total += len(entries)
                self.state.stats.reclaimed += len(entries)
                yield entries
            if next_id in (b"0-0", "0-0"):
                break
            start = next_id
        if total:
            logger.info(
                "reclaimed %d %s idle for more than %d ms",
                total,
                "entry" if total == 1 else "entries",
                self.s.claim_idle_ms,
            )


def split_poison(entries: Entries, counts: dict[bytes, int], max_deliveries: int) -> tuple[Entries, Entries]:
    """(poison, rest): poison entries have been delivered ``max_deliveries`` times."""
    poison = [e for e in entries if counts.get(e[0], 0) >= max_deliveries]
    if not poison:
        return [], entries
    return poison, [e for e in entries if counts.get(e[0], 0) < max_deliveries]


def poison_requests(
    entries: Entries, counts: dict[bytes, int], max_deliveries: int, now_ms: float, limits: Limits
) -> list[Request]:
    """Each poison entry's ``internal`` answer, addressed as the entry asked if
    its envelope can be read at all (decoding may be what fails on it)."""
    reqs = []
    for eid, fields in entries:
        req = _envelope(eid, fields, now_ms, limits)
        req.fail(
            "internal",
            f"processing failed on each of {counts.get(eid, 0)} deliveries "
            f"(MAX_DELIVERIES={max_deliveries}); the entry was dead-lettered",
        )
        reqs.append(req)
    logger.warning(
        "dead-lettering %d poison entr%s after %d deliveries: %s",
        len(entries),
        "y" if len(entries) == 1 else "ies",
        max_deliveries,
        ", ".join(eid.decode() for eid, _ in entries[:5]),
    )
    return reqs


def _envelope(eid: bytes, fields: dict[bytes, bytes], now_ms: float, limits: Limits) -> Request:
    try:
        req = decode_entry(eid, fields, None, now_ms, limits)
        if req.error in (None, "expired"):
            return req
    except Exception:  # noqa: BLE001 - the entry is poison; fall back to the defaults
        pass
    text = eid.decode("ascii")
    return Request(entry_id=text, id=text, reply_to=limits.default_stream)
