"""A blocking call (a registry request) on a daemon thread, awaited for a bounded
time: a call that never returns costs the event loop nothing, and does not keep
the process from exiting (``asyncio.to_thread``'s pool threads are joined at exit)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Bounded:
    """Runs one call at a time; while one is stuck past its bound, the next fails fast."""

    def __init__(self, name: str, busy_error: Callable[[str], Exception]) -> None:
        self.name = name
        self._busy_error = busy_error  # the exception raised for a timeout or a stuck call
        self._busy: asyncio.Future[Any] | None = None

    @property
    def busy(self) -> bool:
        return self._busy is not None and not self._busy.done()

    async def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        if self.busy:
            raise self._busy_error("the previous call has not returned yet")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(_consume)

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                _settle(loop, future, None, exc)
            else:
                _settle(loop, future, result, None)

        self._busy = future
        threading.Thread(target=run, name=self.name, daemon=True).start()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise self._busy_error(f"no answer within {timeout_s:g} s") from None


def _settle(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], result: T | None, exc: BaseException | None
) -> None:
    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]  # None only when exc is set

    with contextlib.suppress(RuntimeError):  # the loop closed while the call hung: nobody waits
        loop.call_soon_threadsafe(settle)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's exception, so asyncio does not log it at exit."""
    if not future.cancelled():
        future.exception()
