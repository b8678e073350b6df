"""The client a strategy uses with prices: ticks in, actions out. It keeps one
streaming feature builder per pair, built from the pair contract the workers
publish, sends each state with that contract's id, and tracks the position from
the actions it receives (or from fills the strategy reports). Imports no torch.

    async with ActionClient("redis://127.0.0.1:6379/0") as actions:
        prices = PriceClient(actions)
        for price_a, price_b in feed:
            result = await prices.tick("KO/PEP", price_a, price_b)   # None while warming up

When a worker answers ``contract_mismatch`` (its model changed under the
strategy's feet), the client fetches the contract again, rebuilds the pair's
features from its own price history under the new contract, and retries once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.contract import PairContract
from agent.features import WARMUP, sign
from agent.streaming import FeatureBuilder
from worker.client import ActionClient, ActionError
from worker.protocol import ANY_PAIR, SHARDS_FIELD, Result, plain_label

CONTRACTS_KEY = "statpair:contracts"  # the workers' CONTRACTS_KEY setting


class MixedFleet(ActionError):
    """After a rebuild on the contract the workers publish, a worker still serves another:
    the workers of this stream serve different models (one is stale, or mid-swap)."""

    def __init__(self, result: Result, pair: str, published: str) -> None:
        super().__init__(result)
        self.args = (
            f"{pair}: worker {result.worker or '?'} answered contract_mismatch again after the rebuild on "
            f"contract {published}, the one the workers publish for {pair}: the workers of this stream serve "
            f"different models ({self.detail}); see each worker's cmd=status ('fleet') and its log",
        )


class TickRefused(ValueError):
    """A tick no price file would have passed, or far from what the model was trained on:
    refused before it reaches the pair's features (one sentence says why)."""


MAX_JUMP = 10.0  # a leg moving this many times (or 1/this) in one tick: refused, as agent.data refuses a row
LN2 = math.log(2.0)


class ContractUnavailable(LookupError):
    """No worker has published a contract for the pair (no model is served yet)."""


@dataclass
class _Book:
    """One pair: its contract and builder, the ticks it saw, the position held."""

    contract: PairContract
    builder: FeatureBuilder
    history: deque[tuple[float, float, float]]  # (price A, price B, position held into the tick)
    position: float = 0.0  # held now: carried into the next tick
    held_into_last: float = 0.0  # the position the last tick was fed with
    last: tuple[float, float] | None = None  # the last tick's prices
    entry: tuple[float, float] | None = None  # prices whose spread is the position's entry
    state: np.ndarray | None = None  # the last tick's state, for resend()
    # The contract's id, read once: a pydantic private attribute costs ~2.4 µs a read per tick.
    contract_id: str = field(init=False)
    # log(A/B) bounds from the contract's training range: (trained low, high, near band low,
    # high, far band low, high); None when the contract records none (synthetic, or older).
    bounds: tuple[float, float, float, float, float, float] | None = field(init=False)

    def __post_init__(self) -> None:
        self.contract_id = self.contract.id
        trained = getattr(self.contract.data, "log_ratio", None)
        if trained is None:
            self.bounds = None
        else:
            lo, hi = trained
            near, far = 0.25 * (hi - lo), max(hi - lo, LN2)
            self.bounds = (lo, hi, lo - near, hi + near, lo - far, hi + far)


class PriceClient:
    """Prices in, actions out, over an ``ActionClient``.

    ``follow_actions`` (default True): after each ok action the position is
    taken to be the action (clipped to [-1, 1]), as the model was trained;
    a strategy whose fills differ reports them with ``report_position``."""

    def __init__(
        self, client: ActionClient, *, contracts_key: str = CONTRACTS_KEY, follow_actions: bool = True
    ) -> None:
        self.client = client
        self.contracts_key = contracts_key
        client.contracts_key = contracts_key  # where the client checks the workers' SHARDS too
        self.follow_actions = follow_actions
        self._books: dict[str, _Book] = {}
        self.rebuilds = 0  # contract changes recovered from

    # -- contracts ---------------------------------------------------------------------

    async def fetch_contract(self, pair: str) -> PairContract:
        """The contract the workers serve for ``pair`` (or for every pair)."""
        raw: Any = await self.client.redis.hmget(self.contracts_key, [pair, ANY_PAIR])
        text = next((v for v in raw if v is not None), None)
        if text is None:
            raise ContractUnavailable(await self._unserved(pair))
        return PairContract.from_json(text, source=f"{self.contracts_key}[{pair}]")

    async def _unserved(self, pair: str) -> str:
        """Why there is no contract for ``pair``: the pairs the workers do serve, and the
        one meant when the label differs only by case or separators."""
        fields: Any = await self.client.redis.hkeys(self.contracts_key)
        served = sorted(
            text
            for text in (f.decode() if isinstance(f, bytes) else str(f) for f in fields)
            if text != SHARDS_FIELD
        )
        if not served:
            return f"no worker publishes a contract for {pair!r} in {self.contracts_key} (is a model served?)"
        detail = f"no worker serves a model trained for pair {pair!r}: they serve {', '.join(served)}"
        meant = [p for p in served if plain_label(p) == plain_label(pair)]
        return detail + (f"; did you mean {meant[0]}?" if meant else "")

    async def _book(self, pair: str) -> _Book:
        book = self._books.get(pair)
        if book is None:
            contract = await self.fetch_contract(pair)
            builder = FeatureBuilder(contract)
            book = _Book(contract, builder, deque(maxlen=builder.warmup + 1))
            self._books[pair] = book
        return book

    def contract(self, pair: str) -> PairContract | None:
        book = self._books.get(pair)
        return None if book is None else book.contract

    # -- positions ---------------------------------------------------------------------

    def position(self, pair: str) -> float:
        book = self._books.get(pair)
        return 0.0 if book is None else book.position

    def report_position(self, pair: str, position: float) -> None:
        """What the strategy actually holds in ``pair`` now (its fills), in [-1, 1]."""
        if not math.isfinite(position):
            raise ValueError(f"position must be finite, got {position!r}")
        book = self._books.get(pair)
        if book is None:
            raise KeyError(f"no ticks seen for {pair!r} yet")
        book.position = max(-1.0, min(1.0, float(position)))

    def needed(self, pair: str) -> int:
        """Ticks still to feed ``pair`` before the first action."""
        book = self._books.get(pair)
        return WARMUP + 1 if book is None else book.builder.needed

    # -- ticks -------------------------------------------------------------------------

    async def warm(
        self, pair: str, prices_a: Sequence[float] | np.ndarray, prices_b: Sequence[float] | np.ndarray
    ) -> int:
        """Feed a price history (held flat) in one call; returns the ticks still needed.
        Each tick is checked as ``tick`` checks it."""
        a_list, b_list = np.asarray(prices_a, float).tolist(), np.asarray(prices_b, float).tolist()
        if len(a_list) != len(b_list):
            raise ValueError(
                f"{pair}: warm got {len(a_list)} prices of leg A and {len(b_list)} of leg B: give both legs' "
                "histories, one price of each per tick"
            )
        book = await self._book(pair)
        for a, b in zip(a_list, b_list, strict=True):
            if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b):
                self._check(pair, book, a, b)
            self._feed(book, a, b)
        return book.builder.needed

    async def tick(self, pair: str, price_a: float, price_b: float) -> Result | None:
        """Feed one tick and, once warmed up, ask for its action (None while warming).

        Raises ``ActionError`` for an error answer (after one retry on
        ``contract_mismatch``), ``TimeoutError`` when no worker answers in time."""
        if not isinstance(pair, str) or not pair:
            raise TypeError(f"the pair is a label such as 'KO/PEP', got {pair!r}")
        for leg, price in (("A", price_a), ("B", price_b)):
            if isinstance(price, bool) or not isinstance(price, int | float | np.integer | np.floating):
                raise TypeError(f"{pair}: the price of leg {leg} must be a number, got {price!r}")
        book = await self._book(pair)
        if price_a > 0 and price_b > 0 and math.isfinite(price_a) and math.isfinite(price_b):
            self._check(pair, book, float(price_a), float(price_b))  # (the builder refuses the rest)
        state = self._feed(book, price_a, price_b)
        book.state = state
        if state is None:
            return None
        return await self._ask(pair, book, state)

    async def resend(self, pair: str) -> Result:
        """Ask again for the action of ``pair``'s last tick, without feeding it again: after
        a ``TimeoutError`` (or any lost answer) call this, not ``tick`` with the same prices,
        which would count the tick twice in the features."""
        book = self._books.get(pair)
        if book is None or book.state is None:
            raise ValueError(f"no warmed-up tick of {pair} to send again")
        return await self._ask(pair, book, book.state)

    async def _ask(self, pair: str, book: _Book, state: np.ndarray) -> Result:
        try:
            result = await self.client.act(state, pair=pair, contract=book.contract_id)
        except ActionError as exc:
            if exc.code != "contract_mismatch":
                raise
            book = await self._rebuild(pair, book)
            state = book.state = book.builder.row64().astype(np.float32)
            try:
                result = await self.client.act(state, pair=pair, contract=book.contract_id)
            except ActionError as again:
                if again.code != "contract_mismatch":
                    raise
                raise MixedFleet(again.result, pair, book.contract_id) from None
        if self.follow_actions and result.action is not None:
            book.position = max(-1.0, min(1.0, result.action))
        return result

    def _check(self, pair: str, book: _Book, price_a: float, price_b: float) -> None:
        """Refuse a tick a price file would not have passed (a leg moving 10× or more at
        once), or whose log(A/B) lies far outside the model's training range: nearer the
        range's mirror image (the legs swapped), or beyond it by its own width."""
        if book.last is not None:
            for leg, new, old in (("A", price_a, book.last[0]), ("B", price_b, book.last[1])):
                if new >= old * MAX_JUMP or new * MAX_JUMP <= old:
                    raise TickRefused(
                        f"{pair}: the price of leg {leg} moved from {old:g} to {new:g} in one tick "
                        f"({new / old:.3g}×), as no row of a price file may (a typo, or an unadjusted "
                        f"split); if it is real, PriceClient.forget({pair!r}) and warm the pair again"
                    )
        if book.bounds is None:
            return
        lo, hi, near_lo, near_hi, far_lo, far_hi = book.bounds
        ratio = math.log(price_a) - math.log(price_b)
        swapped = not near_lo <= ratio <= near_hi and near_lo <= -ratio <= near_hi
        if not swapped and far_lo <= ratio <= far_hi:
            return
        legs = book.contract.instruments
        trained = f"{math.exp(lo):.3g}–{math.exp(hi):.3g}"
        why = (
            f"the legs look swapped: send {legs.leg_a} as leg A and {legs.leg_b} as leg B"
            if swapped
            else "beyond it by more than its own width (an unadjusted split? another pair?)"
        )
        raise TickRefused(
            f"{pair}: A/B is {price_a / price_b:.3g} on this tick, far outside the {trained} the model was "
            f"trained on: {why}"
        )

    def forget(self, pair: str) -> None:
        """Drop everything kept of ``pair`` (its features, position, last tick): the next tick
        starts it again, from its warm-up."""
        self._books.pop(pair, None)

    def _feed(self, book: _Book, price_a: float, price_b: float) -> np.ndarray | None:
        """One tick into the pair's book and builder (the builder checks the prices)."""
        held = book.position
        state = book.builder.update(price_a, price_b, held)
        # The entry, kept as prices so that it survives a change of contract.
        if sign(held) != sign(book.held_into_last) or book.entry is None:
            book.entry = book.last or (price_a, price_b)
        book.held_into_last, book.last = held, (price_a, price_b)
        book.history.append((price_a, price_b, held))
        return state

    async def _rebuild(self, pair: str, old: _Book) -> _Book:
        """The workers serve another contract now: rebuild the pair's features from its
        price history under it (the last ``warmup + 1`` ticks fix every market
        feature; the entry is carried over as prices)."""
        contract = await self.fetch_contract(pair)
        builder = FeatureBuilder(contract)
        ticks = list(old.history)
        for a, b, held in ticks[:-1]:
            builder.update(a, b, held)
        assert old.entry is not None  # set on the first tick
        builder.entry = contract.spread.value(*old.entry)
        a, b, held = ticks[-1]
        builder.update(a, b, held)
        book = _Book(contract, builder, old.history, old.position, old.held_into_last, old.last, old.entry)
        self._books[pair] = book
        self.rebuilds += 1
        return book
