"""Recovery: reclaim entries other workers read but never answered (XAUTOCLAIM),
count deliveries (XPENDING), and retire poison entries after MAX_DELIVERIES
with an ``internal`` answer and a dead letter, so nothing loops forever."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from worker.protocol import GONE, Request, batch_tail, decode_entry, entry_time_ms, error_fields
from worker.publish import Batch

if TYPE_CHECKING:
    from worker.loop import Worker

logger = logging.getLogger(__name__)

MAX_CLAIM_ROUNDS = 100  # per pass; a pass stops early when the PEL has been scanned

Entries = list[tuple[bytes, dict[bytes, bytes]]]


class Recovery:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.s = worker.s

    async def delivery_counts(self, entries: Entries) -> dict[bytes, int]:
        """How often each of our pending entries has been delivered (XPENDING)."""
        ids = [eid for eid, _ in entries]
        rows = await self.w.redis.xpending_range(
            self.s.states_stream,
            self.s.group,
            min=ids[0],
            max=ids[-1],
            count=2 * len(ids) + 100,
            consumername=self.s.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def reclaim(self) -> int:
        """Take over entries idle longer than CLAIM_IDLE_MS (any consumer's, ours too) and answer them."""
        start: bytes | str = "0-0"
        total = 0
        for _ in range(MAX_CLAIM_ROUNDS):
            next_id, entries, deleted_ids = await self.w.redis.xautoclaim(
                self.s.states_stream,
                self.s.group,
                self.s.consumer,
                min_idle_time=self.s.claim_idle_ms,
                start_id=start,
                count=self.s.read_count,
            )
            # Redis drops ids whose payload was deleted from the PEL; answer them all the same.
            entries = list(entries) + [(eid, GONE) for eid in deleted_ids or []]
            if entries:
                counts = await self.delivery_counts(entries)
                total += len(entries)
                self.w.stats.reclaimed += len(entries)
                await self.w.handle(entries, counts)
            if next_id in (b"0-0", "0-0"):
                break
            start = next_id
        if total:
            logger.info("reclaimed %d entries idle for more than %d ms", total, self.s.claim_idle_ms)
        return total

    async def answer_poison(self, entries: Entries, counts: dict[bytes, int]) -> None:
        """Entries delivered MAX_DELIVERIES times: answer ``internal``, dead-letter, acknowledge."""
        now_ms = time.time() * 1000.0
        batch = Batch(self.s.states_stream, self.s.group, self.s.results_maxlen)
        tail = batch.tail(batch_tail(self.s.consumer, 0.0, 0.0, 1))
        for eid, fields in entries:
            n = counts.get(eid, 0)
            req = self._envelope(eid, fields, now_ms)
            detail = (
                f"processing failed on each of {n} deliveries (MAX_DELIVERIES="
                f"{self.s.max_deliveries}); the entry was dead-lettered"
            )
            req.fail("internal", detail)
            queue_ms = max(0.0, now_ms - entry_time_ms(req.entry_id))
            batch.xadd(req.reply_to, error_fields(req, queue_ms), self.s.results_maxlen, tail)
            self.w.dead_letter(batch, req.entry_id, fields, "internal", detail, deliveries=n)
        await batch.run(self.w.redis, self.w.publish_script, [eid.decode() for eid, _ in entries])
        self.w.stats.results["internal"] += len(entries)
        self.w.stats.dead_lettered += len(entries)
        logger.warning(
            "dead-lettered %d poison entr%s after %d deliveries: %s",
            len(entries),
            "y" if len(entries) == 1 else "ies",
            self.s.max_deliveries,
            ", ".join(eid.decode() for eid, _ in entries[:5]),
        )

    def _envelope(self, eid: bytes, fields: dict[bytes, bytes], now_ms: float) -> Request:
        """The entry's id and reply_to if they can be read at all (decoding may be the poison)."""
        try:
            req = decode_entry(eid, fields, None, now_ms, self.w.limits)
            if req.error in (None, "expired"):
                return req
        except Exception:  # noqa: BLE001 - the entry is poison; fall back to the defaults
            pass
        text = eid.decode("ascii")
        return Request(entry_id=text, id=text, reply_to=self.s.results_stream)
