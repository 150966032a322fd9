"""An in-process store with versions and notices: several dicts on one ``MemoryStore`` behave like
several processes on one server. Switches make it drop notices, fail or freeze, so that applications
can test their own handling of outages without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Unpack

from .._backend import Delta, new_token
from .._dict import AsyncDurableDict, V
from .._types import DictOptions

__all__ = ["MemoryBackend", "MemoryDict", "MemoryStore", "MemoryStoreError"]


class MemoryStoreError(ConnectionError):
    """What a failing ``MemoryStore`` raises, as a network client would."""


class MemoryStore:
    """The shared content of one dict: values, a version and its token, a change log, subscribers.

    Test switches (plain attributes):

    - ``drop_notices``: commits publish nothing, as when pub/sub loses messages.
    - ``failing``: every call raises ``MemoryStoreError`` and live subscriptions break.
    - ``frozen``: every call waits until ``frozen`` is cleared, as with a stopped server.
    - ``latency``: seconds each call takes.

    ``round_trips`` counts calls, so tests can assert how many a piece of code made.
    ``log_limit`` bounds the change log and the commit tokens kept; a dict older than what they
    reach reloads fully. ``rewind()`` puts the store back in time, as a restored backup would.
    """

    def __init__(self, *, log_limit: int = 10_000) -> None:
        self.items: dict[str, bytes] = {}
        self.version: int = 0
        self.token: str | None = None
        #: Commit tokens by version, as far back as the log reaches.
        self.history: dict[int, str] = {}
        self.log: dict[str, int] = {}
        self.horizon: int = 0
        self.log_limit: int = log_limit
        self.round_trips: int = 0
        self.drop_notices: bool = False
        self.latency: float = 0.0
        self._failing = False
        self._frozen = False
        self._thawed: asyncio.Event | None = None
        self._subscribers: set[asyncio.Queue[Delta | BaseException]] = set()

    @property
    def failing(self) -> bool:
        return self._failing

    @failing.setter
    def failing(self, value: bool) -> None:
        self._failing = value
        if value:
            for queue in self._subscribers:
                queue.put_nowait(MemoryStoreError("the store went away"))

    @property
    def frozen(self) -> bool:
        return self._frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._frozen = value
        if self._thawed is None:
            self._thawed = asyncio.Event()
        if value:
            self._thawed.clear()
        else:
            self._thawed.set()

    async def _round_trip(self) -> None:
        self.round_trips += 1
        await asyncio.sleep(self.latency)
        if self._frozen and self._thawed is not None:
            await self._thawed.wait()
        if self._failing:
            raise MemoryStoreError("the store is failing")

    def rewind(self, version: int, items: Mapping[str, bytes]) -> None:
        """Put the store back to an older state, as a server restarting from an old backup would.

        The commit token at ``version`` is the one the store had then (a backup keeps it); the
        commits after it are forgotten, and the next ones get new tokens: another history.
        """
        self.version = version
        self.token = self.history.get(version)
        self.history = {v: t for v, t in self.history.items() if v <= version}
        self.items = dict(items)
        self.log = {}
        self.horizon = version

    def publish(self, notice: Delta) -> None:
        """Hand every subscriber ``notice`` as if the store had sent it: another party speaking on
        the channel (a forged or misdirected notice)."""
        for queue in self._subscribers:
            queue.put_nowait(notice)

    def reading(self, changes: Mapping[str, bytes | None]) -> Delta:
        """What the store holds now, as a reading (nothing written)."""
        return Delta(self.version, dict(changes), token=self.token)

    def _commit(self, changes: Mapping[str, bytes | None]) -> Delta:
        prev, prev_token = self.version, self.token
        self.version += 1
        self.token = token = new_token()
        self.history[self.version] = token
        for key, raw in changes.items():
            if raw is None:
                self.items.pop(key, None)
            else:
                self.items[key] = raw
            self.log.pop(key, None)
            self.log[key] = self.version
        while len(self.log) > self.log_limit:
            oldest = next(iter(self.log))
            self.horizon = max(self.horizon, self.log.pop(oldest))
        while len(self.history) > self.log_limit:
            forgotten = next(iter(self.history))
            del self.history[forgotten]
            self.horizon = max(self.horizon, forgotten)
        delta = Delta(self.version, dict(changes), prev=prev, token=token, prev_token=prev_token)
        if not self.drop_notices:
            for queue in self._subscribers:
                queue.put_nowait(delta)
        return delta


class MemoryBackend:
    """The ``Backend`` protocol over a ``MemoryStore``."""

    max_key_bytes = 1 << 16
    max_value_bytes: int | None = None
    poll_interval: float | None = None

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store: MemoryStore = store if store is not None else MemoryStore()

    def __repr__(self) -> str:
        return f"MemoryBackend(0x{id(self.store):x})"

    async def start(self) -> None:
        """Reach the store once, as a client connecting would (it fails while the store is ``failing``)."""
        await self.store._round_trip()

    async def aclose(self) -> None:
        """Nothing to close: the store belongs to whoever made it."""

    async def load(self) -> Delta:
        """Every entry, the version and its token."""
        store = self.store
        await store._round_trip()
        return Delta(store.version, dict(store.items), full=True, token=store.token)

    async def changes_since(self, version: int) -> Delta:
        """What changed after ``version``; everything when the log cannot tell."""
        store = self.store
        await store._round_trip()
        if version < store.horizon or version > store.version:
            # Too old for the log, or newer than the store (which lost writes): everything.
            return Delta(store.version, dict(store.items), full=True, token=store.token)
        changed = {k: store.items.get(k) for k, v in store.log.items() if v > version}
        return Delta(
            store.version,
            changed,
            prev=version,
            token=store.token,
            prev_token=store.history.get(version),
        )

    async def set(self, key: str, value: bytes) -> Delta:
        """Store ``value`` under ``key``."""
        await self.store._round_trip()
        return self.store._commit({key: value})

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        """Delete ``key``; the commit and the value it held, or a reading when it is absent."""
        store = self.store
        await store._round_trip()
        old = store.items.get(key)
        if old is None:
            return store.reading({key: None}), None
        return store._commit({key: None}), old

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        """Store ``value`` unless ``key`` is present; the delta and the value the key holds."""
        store = self.store
        await store._round_trip()
        existing = store.items.get(key)
        if existing is not None:
            return store.reading({key: existing}), existing
        return store._commit({key: value}), value

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        """Store every item in one commit."""
        await self.store._round_trip()
        return self.store._commit(items)

    async def clear(self) -> Delta:
        """Delete every key in one commit; a reading when the store is already empty."""
        store = self.store
        await store._round_trip()
        if not store.items:
            return store.reading({})
        return store._commit(dict.fromkeys(store.items))

    async def read(self, key: str) -> Delta:
        """One key as the store holds it now, with the version and token."""
        store = self.store
        await store._round_trip()
        return store.reading({key: store.items.get(key)})

    async def drop(self) -> None:
        """Forget everything: entries, change log, version and token."""
        store = self.store
        await store._round_trip()
        store.items, store.log, store.history = {}, {}, {}
        store.version, store.token, store.horizon = 0, None, 0

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        """Store ``new`` (``None``: delete) if the stored value is ``expected`` (``None``: absent)."""
        store = self.store
        await store._round_trip()
        current = store.items.get(key)
        if current != expected:
            return store.reading({key: current}), False
        if current is None and new is None:
            return store.reading({key: None}), True
        return store._commit({key: new}), True

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Delta]]:
        """Follow the store's commits (the notices it publishes), until the block ends."""
        store = self.store
        await store._round_trip()
        queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        store._subscribers.add(queue)
        try:
            yield _notices(queue)
        finally:
            store._subscribers.discard(queue)


async def _notices(queue: asyncio.Queue[Delta | BaseException]) -> AsyncIterator[Delta]:
    while True:
        item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        yield item


class MemoryDict(AsyncDurableDict[V]):
    """A dict on an in-process ``MemoryStore``; dicts given the same store share its content.

    For tests and for applications that want the dict's behaviour without a server.
    """

    def __init__(self, store: MemoryStore | None = None, **opts: Unpack[DictOptions]) -> None:
        super().__init__(MemoryBackend(store), **opts)

    @property
    def store(self) -> MemoryStore:
        """The store this dict reads and writes."""
        backend = self._backend
        assert isinstance(backend, MemoryBackend)
        return backend.store
