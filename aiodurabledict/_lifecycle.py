"""A dict's life: opening (or opening on a fallback while the store is down), closing, forks.

``Lifecycle`` owns the ``State``, the syncer of the current opening, the snapshot keeper and the
rules: concurrent opens share one, a close during an open waits for it and wins, a closed dict stays
closed, a forked child or a dead event loop only forgets what the parent or old loop owns. It never
refers to the dict itself, so a dict nobody holds can be collected and finalised.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._backend import Backend, Delta
from ._cache import Cache, ForkedEntries
from ._snapshot import SnapshotKeeper, read_snapshot
from ._status import StatusBoard
from ._sync import Syncer
from .errors import BackendError, NotOpenError

__all__ = ["Lifecycle", "State"]

log = logging.getLogger("aiodurabledict")


class State(enum.Enum):
    """Where a dict is in its life; a closed dict stays closed (make a new one)."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


# Lifecycles of the dicts open in this process: a forked child must not serve their frozen copies.
_open: weakref.WeakValueDictionary[int, Lifecycle] = weakref.WeakValueDictionary()


def _after_fork() -> None:
    for life in list(_open.values()):
        life.forked_away()
    _open.clear()


os.register_at_fork(after_in_child=_after_fork)

Fallback = tuple[Delta, float | None, BackendError]


class Lifecycle:
    """Opening and closing one dict (see the module docstring); ``sync`` is the current syncer."""

    def __init__(
        self,
        backend: Backend,
        cache: Cache,
        board: StatusBoard,
        *,
        name: str,
        timeout: float,
        options: Mapping[str, Any],
        bootstrap: Delta | None,
        snapshot: str | os.PathLike[str] | None,
    ) -> None:
        self._backend = backend
        self._cache = cache
        self._board = board
        self.name = name
        self._timeout = timeout
        self._options = options
        self._bootstrap = bootstrap
        self._snapshot = snapshot
        self.state = State.NEW
        self.sync = self._new_syncer()
        self._keeper: SnapshotKeeper | None = None
        self._opening: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._close_asked = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()
        self.forked = False

    def _new_syncer(self) -> Syncer:
        return Syncer(self._backend, self._cache, name=self.name, board=self._board, **self._options)

    @property
    def kind(self) -> str:
        """The dict's class name, for messages."""
        return self.name.partition("(")[0]

    # -- opening -----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (see ``AsyncDurableDict.open``)."""
        if self.state is State.OPEN:
            self.ensure_open()
            return
        if self.state is State.OPENING:
            assert self._opening is not None
            await asyncio.shield(self._opening)
            self.ensure_open()
            return
        if self.state is not State.NEW:
            raise NotOpenError(f"{self.kind} was closed; a closed dict cannot be opened again")
        self.state = State.OPENING
        loop = self.loop = asyncio.get_running_loop()
        opening = self._opening = loop.create_future()
        try:
            await self._open()
        except BaseException as exc:
            self.state = State.CLOSED if self._close_asked else State.NEW
            if isinstance(exc, asyncio.CancelledError):
                opening.cancel()
            else:
                opening.set_exception(exc)
                opening.exception()  # retrieved: another opener may or may not be waiting
            raise
        opening.set_result(None)

    async def _open(self) -> None:
        self._cache.reset()
        sync = self.sync = self._new_syncer()
        fallback: Fallback | None = None
        try:
            try:
                await sync.call(self._backend.start(), self._timeout, "start")
                delta = await sync.call(self._backend.load(), self._timeout, "load")
            except BackendError as exc:
                fallback = self._fallback(exc)
                if fallback is None:
                    raise
                delta = fallback[0]
            if self._close_asked:
                raise NotOpenError(f"{self.kind} was closed while it was opening")
        except BaseException:
            # Whatever the backend made (an owned client, a connection) must not outlive a failed open.
            await asyncio.shield(self._release())
            raise
        self._cache.apply(delta)
        if fallback is None:
            sync.confirmed()
        else:
            sync.started_without_store(fallback[2], fallback[1])
        if self._snapshot is not None:
            self._keeper = SnapshotKeeper(self._snapshot, self._cache, lambda: sync.confirmed_wall)
            self._keeper.start()
        self.state = State.OPEN
        _open[id(self)] = self
        sync.mark_open()
        if sync.watch:
            sync.start_watcher()
        else:
            sync.went_live()

    def _fallback(self, cause: BackendError) -> Fallback | None:
        """What to open on while the store cannot be reached: the snapshot, else the bootstrap
        values; ``None`` (fail) when the dict was given neither."""
        found = None if self._snapshot is None else read_snapshot(self._snapshot)
        if found is not None:
            log.warning("%s: the store cannot be reached at open; serving the snapshot file", self.name)
            return found[0], found[1], cause
        if self._bootstrap is not None:
            log.warning("%s: the store cannot be reached at open; serving the bootstrap values", self.name)
            return self._bootstrap, None, cause
        return None

    async def _release(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._backend.aclose()
        except Exception as exc:  # noqa: BLE001 - releasing after a failure must not hide that failure
            warnings.warn(f"releasing {self.name} failed: {exc!r}", ResourceWarning, stacklevel=2)

    # -- closing -----------------------------------------------------------------------------------

    async def aclose(self, streams: Iterable[Any]) -> None:
        """Close (see ``AsyncDurableDict.aclose``); ``streams`` are ended."""
        state = self.state
        if state is State.NEW:
            self.state = State.CLOSED
            self.sync.mark_closed(f"{self.kind} is closed")
            return
        if state is State.OPENING:
            self._close_asked = True
            assert self._opening is not None
            await asyncio.wait([self._opening])
            if self.state is State.OPEN:
                await self.aclose(streams)
            return
        if state is State.CLOSING:
            assert self._closing is not None
            await asyncio.wait([self._closing])
            return
        if state is State.CLOSED:
            return
        self.state = State.CLOSING
        loop = asyncio.get_running_loop()
        closing = self._closing = loop.create_future()
        sync = self.sync
        # What a forked child or another event loop holds belongs to the parent's or the old loop's
        # clients: only forget it.
        release = not self.forked and not sync.orphaned and loop is self.loop
        if sync.closed is None:
            sync.mark_closed(f"{self.kind} is closed")
        _open.pop(id(self), None)
        try:
            if release:
                await sync.stop_watcher()
            for stream in list(streams):
                stream.end()
            keeper, self._keeper = self._keeper, None
            if keeper is not None and release:
                await keeper.aclose()
            if release:
                await self._backend.aclose()
        finally:
            self.state = State.CLOSED
            closing.set_result(None)

    def finalize(self, warn: Callable[[], None]) -> None:
        """The dict is being collected: if it was left open here, ``warn`` and stop its watcher."""
        if self.state is State.OPEN and not self.forked and self._pid == os.getpid():
            warn()
            self.sync.abandon()

    def forked_away(self) -> None:
        """In a forked child: refuse every read and call; touch nothing the parent's clients own."""
        self.forked = True
        self.sync.mark_closed(ForkedEntries.reason)
        self._cache.data.__class__ = ForkedEntries

    def ensure_open(self) -> None:
        """Raise ``NotOpenError`` unless open, in this process and in this event loop."""
        if self.state is not State.OPEN:
            what = "closed" if self.state in (State.CLOSING, State.CLOSED) else "not open yet"
            raise NotOpenError(f"{self.kind} is {what}: use `async with` or `await d.open()`")
        self.sync.ensure_usable()
        if asyncio.get_running_loop() is not self.loop:
            raise NotOpenError(f"{self.kind} was opened in another event loop; open a new dict in this one")
