"""A dict's health as events: the current ``Status``, callbacks and streams of its changes, readiness.

The ``StatusBoard`` belongs to the dict and outlives each opening, so listeners registered before
``open()`` see every state from ``initializing`` on. The syncer reports to it; nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Self

from ._types import Health, Status
from .errors import NotOpenError

__all__ = ["StatusBoard", "StatusStream"]

log = logging.getLogger("aiodurabledict")

StatusCallback = Callable[[Status], None]

# Status changes kept for a stream's consumer; older ones give way (the newest state is what counts).
_STREAM_KEEP = 64


class StatusBoard:
    """The latest ``Status`` of one dict, and who wants to hear when its state changes."""

    def __init__(self, initial: Status) -> None:
        self.current = initial
        self._callbacks: list[StatusCallback] = []
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def state(self) -> Health:
        """The current state."""
        return self.current.state

    def report(self, status: Status) -> None:
        """A new status; listeners hear it when its state differs from the last one's."""
        previous, self.current = self.current, status
        if status.state is previous.state:
            return
        for callback in list(self._callbacks):
            try:
                callback(status)
            except Exception:
                log.exception("a status listener failed")
        if status.state is Health.LIVE or status.state is Health.CLOSED:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def subscribe(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback`` with each ``Status`` whose state changed; returns the unsubscriber."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    async def wait_live(self, timeout: float | None) -> None:
        """Return once the state is ``LIVE``; ``TimeoutError`` after ``timeout`` seconds,
        ``NotOpenError`` if the dict closes first."""
        if self.state is not Health.LIVE:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            finally:
                self._waiters.discard(waiter)
        if self.state is Health.CLOSED:
            raise NotOpenError(self.current.error or "the dict is closed")


class StatusStream:
    """An async iterator of the dict's status changes (the newest 64 kept for a slow consumer), from
    its creation until the dict closes (the ``CLOSED`` status is the last one)."""

    def __init__(self, board: StatusBoard) -> None:
        self._items: deque[Status] = deque(maxlen=_STREAM_KEEP)
        self._ready = asyncio.Event()
        self._ended = board.state is Health.CLOSED
        ref = weakref.ref(self)

        def put(status: Status) -> None:
            stream = ref()
            if stream is not None:
                stream._put(status)

        # Held weakly: a stream its consumer dropped is unsubscribed when collected.
        self._unsubscribe = board.subscribe(put)
        weakref.finalize(self, self._unsubscribe)

    def _put(self, status: Status) -> None:
        self._items.append(status)
        if status.state is Health.CLOSED:
            self._ended = True
            self._unsubscribe()
        self._ready.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Status:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    async def aclose(self) -> None:
        """Stop receiving status changes."""
        self._unsubscribe()
        self._items.clear()
        self._ended = True
        self._ready.set()
