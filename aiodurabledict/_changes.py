"""Change streams: what ``d.changes()`` returns. Bounded, and never a silent loss.

A stream buffers up to ``buffer`` changes for its consumer. A consumer that falls behind gets, after
what was buffered, one ``Change`` with ``lost`` set to the number of changes dropped; the stream
takes new changes again from that marker on. The cache holds a stream only weakly: an ``async for``
left with ``break`` (or any stream dropped) is unregistered when collected, and costs nothing after.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar

from ._types import MISSING, Change

__all__ = ["DEFAULT_BUFFER", "ChangeStream"]

V = TypeVar("V")

#: Changes a stream holds for a consumer that has not read them yet.
DEFAULT_BUFFER = 10_000

Listeners = list[Callable[[Change[Any]], None]]


class ChangeStream(Generic[V]):
    """An async iterator over the changes a cache applies, from its creation until the dict closes.

    ``aclose()`` (or dropping the stream) stops the feed at once.
    """

    def __init__(self, listeners: Listeners, buffer: int = DEFAULT_BUFFER) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, not {buffer!r}")
        self._buffer = buffer
        self._items: deque[Change[V]] = deque()
        self._lost = 0
        self._last_version = 0
        self._ended = False
        self._ready = asyncio.Event()
        self._listeners = listeners
        ref = weakref.ref(self)

        def feed(change: Change[Any]) -> None:
            stream = ref()
            if stream is not None:
                stream._put(change)

        self._feed = feed
        listeners.append(feed)
        # Unregistered when the consumer lets go of the stream, whether or not it was closed.
        self._finalizer = weakref.finalize(self, _detach, listeners, feed)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change[V]:
        while True:
            if self._items:
                return self._items.popleft()
            if self._lost:
                lost, self._lost = self._lost, 0
                return Change("", MISSING, MISSING, self._last_version, lost=lost)
            if self._ended:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()

    def _put(self, change: Change[V]) -> None:
        self._last_version = change.version
        if self._lost or len(self._items) >= self._buffer:
            # Behind: drop until the consumer has read the marker, so that it resyncs from there.
            self._lost += 1
        else:
            self._items.append(change)
        self._ready.set()

    def end(self) -> None:
        """The dict closed: stop after what is buffered (and a marker, if any were lost)."""
        self._finalizer()
        self._ended = True
        self._ready.set()

    async def aclose(self) -> None:
        """Stop receiving changes; what is buffered is dropped."""
        self._finalizer()
        self._items.clear()
        self._lost = 0
        self._ended = True
        self._ready.set()


def _detach(listeners: Listeners, feed: Callable[[Change[Any]], None]) -> None:
    if feed in listeners:
        listeners.remove(feed)
