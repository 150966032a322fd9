"""``AsyncDurableDict``: the public API over a ``Cache`` (the values) and a ``Syncer`` (their freshness).

Reads come from one plain dict that changes are applied to in place, so a read costs a dict lookup.
Writes go to the store first and then into the cache at the version and token the store gave them.
"""

from __future__ import annotations

import asyncio
import enum
import os
import warnings
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, Self, overload

from typing_extensions import TypeVar

from ._backend import Backend, Delta
from ._cache import Cache, ForkedEntries, Items, Keys, Values
from ._codecs import Codec, JSONCodec
from ._sync import Syncer
from ._types import MISSING, Change, Missing, Status
from .errors import (
    BackendError,
    DecodeError,
    EncodeError,
    InvalidKeyError,
    NotOpenError,
    ReplicationError,
    ValueTooLargeError,
)

__all__ = ["AsyncDurableDict", "State"]

# Unparametrised dicts hold Any, so `MemoryDict()` needs no annotation to type-check.
V = TypeVar("V", default=Any)
T = TypeVar("T")

_NO_DEFAULT: Any = object()
# Rounds of compare_and_set when the stored bytes decode to the expected value but differ from
# its encoding (another writer's formatting): the swap is retried against the exact stored bytes.
_CAS_ROUNDS = 3


class State(enum.Enum):
    """Where a dict is in its life; a closed dict stays closed (make a new one)."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


# Dicts open in this process: a forked child must not serve their frozen copies.
_open_dicts: weakref.WeakValueDictionary[int, AsyncDurableDict[Any]] = weakref.WeakValueDictionary()


def _after_fork() -> None:
    for d in list(_open_dicts.values()):
        d._forked_away()
    _open_dicts.clear()


os.register_at_fork(after_in_child=_after_fork)


class _ChangeStream(Generic[V]):
    """An async iterator over the changes a cache applies, from its creation until the dict closes."""

    def __init__(self, cache: Cache, streams: set[_ChangeStream[Any]]) -> None:
        self._cache = cache
        self._streams = streams
        self._queue: asyncio.Queue[Change[V] | None] = asyncio.Queue()
        self._ended = False
        cache.listeners.append(self._queue.put_nowait)
        streams.add(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change[V]:
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._ended = True
            raise StopAsyncIteration
        return item

    def end(self) -> None:
        """The dict closed: stop after what is queued."""
        self._detach()
        self._queue.put_nowait(None)

    async def aclose(self) -> None:
        """Stop receiving changes."""
        self._detach()
        self._ended = True

    def _detach(self) -> None:
        self._streams.discard(self)
        put = self._queue.put_nowait
        listeners = self._cache.listeners
        if put in listeners:
            listeners.remove(put)


class AsyncDurableDict(Generic[V]):
    """A dictionary kept in a durable, shared store and cached in process memory.

    ``backend`` is any object that follows the ``Backend`` protocol. Options, all keyword-only:

    - ``codec``: how values become bytes (default ``JSONCodec()``).
    - ``autosync``: ``await get()`` and ``snapshot()`` check the store first; free while a push
      watcher is live (they may then trail another process's commit by the propagation delay).
    - ``watch``: run a background watcher while open.
    - ``max_staleness``: seconds the cache may go unconfirmed before ``get``/``sync`` raise
      ``StaleError``; ``None`` serves the last known values forever.
    - ``heartbeat``: seconds between the watcher's checks; bounds how late a frozen store, a lost
      notice or a store that went back in time is noticed.
    - ``poll_interval``: seconds between checks for stores that cannot push (default: the
      backend's, else 1 s). Given (or suggested by the backend) for a store that pushes, checks still
      come at least this often, as a safety net for lost notices.
    - ``timeout``: seconds any one store call may take before it fails with ``BackendError``.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        codec: Codec | None = None,
        autosync: bool = True,
        watch: bool = True,
        max_staleness: float | None = None,
        heartbeat: float = 2.0,
        poll_interval: float | None = None,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(backend, Backend):
            missing = [name for name in _BACKEND_MEMBERS if not hasattr(backend, name)]
            raise TypeError(f"{type(backend).__name__} is not a Backend: it lacks {', '.join(missing)}")
        for name, value in (("heartbeat", heartbeat), ("timeout", timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if max_staleness is not None and not max_staleness > 0:
            raise ValueError(f"max_staleness must be positive or None, not {max_staleness!r}")
        suggested = backend.poll_interval
        polled = poll_interval is not None or suggested is not None
        interval = poll_interval if poll_interval is not None else suggested if suggested is not None else 1.0
        if not interval > 0:
            raise ValueError(f"poll_interval must be positive, not {interval!r}")
        self._backend = backend
        self._codec: Codec = codec if codec is not None else JSONCodec()
        self._autosync = autosync
        self._timeout = timeout
        self._options = {
            "timeout": timeout,
            "heartbeat": heartbeat,
            "poll_interval": interval,
            "polled": polled,
            "max_staleness": max_staleness,
            "watch": watch,
        }
        self._cache = Cache(self._codec)
        self._data = self._cache.data
        self._view: Mapping[str, V] = MappingProxyType(self._data)
        self._sync = self._new_syncer()
        self._state = State.NEW
        self._opening: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._close_asked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()
        self._forked = False
        self._streams: set[_ChangeStream[Any]] = set()
        self._changes_seen = 0

    def _new_syncer(self) -> Syncer:
        return Syncer(self._backend, self._cache, name=self._name(), **self._options)  # type: ignore[arg-type]

    def _name(self) -> str:
        return f"{type(self).__name__}({self._backend!r})"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> Self:
        """Load every entry and start the watcher. Opening an open dict does nothing; concurrent
        callers share one opening.

        Raises ``BackendError`` when the store cannot be reached (the dict may be opened again),
        ``NotOpenError`` when it was closed (a closed dict stays closed).
        """
        if self._state is State.OPEN:
            self._ensure_open()
            return self
        if self._state is State.OPENING:
            assert self._opening is not None
            await asyncio.shield(self._opening)
            self._ensure_open()
            return self
        if self._state is not State.NEW:
            raise NotOpenError(f"{type(self).__name__} was closed; a closed dict cannot be opened again")
        self._state = State.OPENING
        loop = self._loop = asyncio.get_running_loop()
        opening = self._opening = loop.create_future()
        try:
            await self._open()
        except BaseException as exc:
            self._state = State.CLOSED if self._close_asked else State.NEW
            if isinstance(exc, asyncio.CancelledError):
                opening.cancel()
            else:
                opening.set_exception(exc)
                opening.exception()  # retrieved: another opener may or may not be waiting
            raise
        opening.set_result(None)
        return self

    async def _open(self) -> None:
        self._cache.reset()
        sync = self._sync = self._new_syncer()
        try:
            await sync.call(self._backend.start(), self._timeout)
            delta = await sync.call(self._backend.load(), self._timeout)
            if self._close_asked:
                raise NotOpenError(f"{type(self).__name__} was closed while it was opening")
        except BaseException:
            # Whatever the backend made (an owned client, a connection) must not outlive a failed open.
            await asyncio.shield(self._release())
            raise
        self._cache.apply(delta)
        sync.confirmed()
        self._state = State.OPEN
        _open_dicts[id(self)] = self
        if sync.watch:
            sync.start_watcher()
        else:
            sync.went_live()

    async def _release(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._backend.aclose()
        except Exception as exc:  # noqa: BLE001 - releasing after a failure must not hide that failure
            warnings.warn(f"releasing {self!r} failed: {exc!r}", ResourceWarning, stacklevel=2)

    async def aclose(self) -> None:
        """Stop the watcher and release what the dict made; the user's client stays open. Idempotent.

        Called while ``open()`` runs in another task, it waits for it and leaves the dict closed
        (``open()`` then raises ``NotOpenError``). In a forked child it only forgets the dict.
        """
        state = self._state
        if state is State.NEW:
            self._state = State.CLOSED
            return
        if state is State.OPENING:
            self._close_asked = True
            assert self._opening is not None
            await asyncio.wait([self._opening])
            if self._state is State.OPEN:
                await self.aclose()
            return
        if state is State.CLOSING:
            assert self._closing is not None
            await asyncio.wait([self._closing])
            return
        if state is State.CLOSED:
            return
        self._state = State.CLOSING
        closing = self._closing = asyncio.get_running_loop().create_future()
        sync = self._sync
        sync.closed = f"{type(self).__name__} is closed"
        _open_dicts.pop(id(self), None)
        try:
            if not self._forked:
                await sync.stop_watcher()
            for stream in list(self._streams):
                stream.end()
            if not self._forked:
                await self._backend.aclose()
        finally:
            self._state = State.CLOSED
            closing.set_result(None)

    close = aclose

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_state", None) is State.OPEN and not self._forked and self._pid == os.getpid():
            warnings.warn(f"{self!r} was never closed", ResourceWarning, stacklevel=1, source=self)
            self._sync.abandon()

    def _forked_away(self) -> None:
        """In a forked child: refuse every read and call; touch nothing the parent's clients own."""
        self._forked = True
        self._sync.closed = ForkedEntries.reason
        self._data.__class__ = ForkedEntries

    def _ensure_open(self) -> None:
        if self._state is not State.OPEN:
            what = "closed" if self._state in (State.CLOSING, State.CLOSED) else "not open yet"
            raise NotOpenError(f"{type(self).__name__} is {what}: use `async with` or `await d.open()`")
        self._sync.ensure_usable()
        if asyncio.get_running_loop() is not self._loop:
            raise NotOpenError(
                f"{type(self).__name__} was opened in another event loop; open a new dict in this one"
            )

    # -- the awaitable API -------------------------------------------------------------------------

    @overload
    async def get(self, key: str) -> V | None: ...

    @overload
    async def get(self, key: str, default: T) -> V | T: ...

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``; checks the store first when ``autosync``.

        Raises ``DecodeError`` when the stored value cannot be decoded, ``StaleError`` past
        ``max_staleness``, ``NotOpenError`` when not open, ``InvalidKeyError`` for a key no store
        could hold.
        """
        if self._sync.free:
            # The hot path: a push watcher keeps the cache current, so this is a dict lookup.
            try:
                return self._data[key]
            except KeyError:
                self._check_key(key)
                return default
        self._check_key(key)
        await self._autosync_quietly()
        try:
            return self._data[key]
        except KeyError:
            return default

    async def set(self, key: str, value: V) -> None:
        """Write ``value`` durably, then into the cache as the codec round-trips it.

        Raises ``EncodeError``/``ValueTooLargeError`` before anything is sent, ``BackendError`` when
        the store fails (the cache is then unchanged; after a timeout the write may still have
        committed).
        """
        self._ensure_open()
        self._check_key(key)
        raw = self._encode(key, value)
        await self._place(await self._call(self._backend.set(key, raw)))

    async def delete(self, key: str) -> None:
        """Remove ``key``; ``KeyError`` if it is absent from the store."""
        await self.pop(key)

    @overload
    async def pop(self, key: str) -> V: ...

    @overload
    async def pop(self, key: str, default: T) -> V | T: ...

    async def pop(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """Remove ``key`` and return its value; ``default`` (even a falsy one) or ``KeyError`` if absent."""
        self._ensure_open()
        self._check_key(key)
        delta, old = await self._call(self._backend.pop(key))
        await self._place(delta)
        if old is None:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        return self._decode(key, old)

    async def setdefault(self, key: str, default: V | None = None) -> V:
        """Atomically store ``default`` unless ``key`` exists; return the value now stored.

        Of any number of concurrent callers (in any process) exactly one writes.
        """
        self._ensure_open()
        self._check_key(key)
        raw = self._encode(key, default)
        delta, stored = await self._call(self._backend.setdefault(key, raw))
        await self._place(delta)
        value: V = self._decode(key, stored)
        return value

    async def update(self, mapping: Mapping[str, V] | Iterable[tuple[str, V]] = (), /, **kwargs: V) -> None:
        """Write many entries in one atomic batch where the store allows it.

        Every key is checked and every value encoded before anything is sent.
        """
        self._ensure_open()
        pairs: Iterable[tuple[str, V]]
        pairs = mapping.items() if isinstance(mapping, Mapping) else mapping
        items: dict[str, bytes] = {}
        for key, value in (*pairs, *kwargs.items()):
            self._check_key(key)
            items[key] = self._encode(key, value)
        if items:
            await self._place(await self._call(self._backend.update(items)))

    async def clear(self) -> None:
        """Remove every entry."""
        self._ensure_open()
        await self._place(await self._call(self._backend.clear()))

    async def compare_and_set(self, key: str, expected: V | Missing, new: V | Missing) -> bool:
        """Atomically store ``new`` if the stored value equals ``expected``; ``True`` if it did.

        ``MISSING`` as ``expected`` means "only if absent", as ``new`` "remove". Values are compared
        as the codec decodes them: bytes written with another formatting of an equal value match.
        The cache shows the store's value when this returns, swapped or not.
        """
        self._ensure_open()
        self._check_key(key)
        expected_raw = None if expected is MISSING else self._encode(key, expected)
        new_raw = None if new is MISSING else self._encode(key, new)
        for _ in range(_CAS_ROUNDS):
            delta, swapped = await self._call(self._backend.compare_and_set(key, expected_raw, new_raw))
            await self._place(delta)
            if swapped:
                return True
            current = delta.changes.get(key)
            if expected is MISSING or current is None or current == expected_raw:
                return False
            try:
                found = self._codec.decode(current)
            except Exception:  # noqa: BLE001 - undecodable bytes equal no value
                return False
            if type(found) is not type(expected) or found != expected:
                return False
            expected_raw = current
        return False

    async def sync(self, *, strict: bool = True) -> bool:
        """Bring the cache up to the store: when this returns, every commit that completed before it
        was called is in the cache. ``True`` when anything changed since the last ``sync()``.

        Costs one version check when nothing changed, shared with concurrent callers whose check
        was not yet sent. ``strict=False`` skips the check while the dict is ``live`` (it may then
        trail another process's commit by the propagation delay). Raises ``BackendError`` when the
        store cannot be reached (the cache keeps its values), ``StaleError`` once the cache has gone
        unconfirmed longer than ``max_staleness``.
        """
        self._ensure_open()
        sync = self._sync
        if strict or not sync.free:
            try:
                await sync.check()
            except BackendError as exc:
                self._ensure_open()
                sync.raise_if_stale(exc)
                raise
        changes = self._cache.changes
        changed = changes != self._changes_seen
        self._changes_seen = changes
        return changed

    async def snapshot(self) -> dict[str, V]:
        """A consistent copy of the cache (undecodable entries left out), checked first when ``autosync``."""
        await self._autosync_quietly()
        return dict(self._data)

    def changes(self) -> AsyncIterator[Change[V]]:
        """Every change the cache applies from now on (local and remote writes), until the dict closes."""
        return _ChangeStream(self._cache, self._streams)

    # -- the synchronous cached view -----------------------------------------------------------------

    def __getitem__(self, key: str) -> V:
        value: V = self._data[key]
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def keys(self) -> Keys:
        """The keys, set-like; iterating takes a snapshot, so awaiting inside the loop is safe."""
        return Keys(self._data)

    def values(self) -> Values:
        """The values (undecodable entries left out), iterated over a snapshot."""
        return Values(self._data)

    def items(self) -> Items:
        """The ``(key, value)`` pairs (undecodable entries left out), iterated over a snapshot."""
        return Items(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncDurableDict):
            return dict.__eq__(self._data, other._data)
        if isinstance(other, Mapping):
            return dict.__eq__(self._data, dict(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def view(self) -> Mapping[str, V]:
        """A live, read-only mapping of the cache; as fast to read as a dict. Never does I/O."""
        return self._view

    @property
    def backend(self) -> Backend:
        """The store behind this dict (its limits, options and counters)."""
        return self._backend

    @property
    def live(self) -> bool:
        """A push watcher follows the store with no known gap: reads trail the store by no more than
        the propagation delay, and ``sync(strict=False)`` or an autosync read costs nothing."""
        return self._sync.free

    @property
    def version(self) -> int:
        """The store version the cache reflects.

        It grows with every change the cache applies, the dict's own writes included. When the store
        goes back in time (it lost writes, or was restored) the cache reloads and this becomes the
        store's, lower, version; that is logged as a warning, never silent.
        """
        return self._cache.version

    @property
    def undecodable(self) -> frozenset[str]:
        """Keys whose stored value the codec could not decode (reading them raises ``DecodeError``)."""
        return frozenset(self._data.bad)

    @property
    def status(self) -> Status:
        """Whether the watcher is connected, and since when the cache may be stale."""
        sync = self._sync
        return Status(
            open=self._state is State.OPEN and sync.closed is None,
            watching=sync.watching,
            connected=sync.connected and self._state is State.OPEN,
            since=sync.since,
            stale_since=None if sync.connected else sync.confirmed_wall,
            version=self._cache.version,
            error=sync.error,
        )

    def __repr__(self) -> str:
        keys = dict.__len__(self._data)
        return f"<{type(self).__name__} {self._state.value} version={self._cache.version} keys={keys}>"

    # -- internals ---------------------------------------------------------------------------------

    async def _call(self, aw: Any) -> Any:
        """One store call for the application, bounded by ``timeout``; a closed dict says so."""
        try:
            return await self._sync.call(aw, self._timeout)
        except ReplicationError as exc:
            # Committed on the primary, only not on enough replicas: the cache shows the write.
            await self._place(exc.delta)
            raise
        except BackendError:
            self._ensure_open()
            raise

    async def _place(self, delta: Delta) -> None:
        await self._sync.place(delta)

    async def _autosync_quietly(self) -> None:
        """Check for a read: on failure serve the last known values, unless past ``max_staleness``."""
        self._ensure_open()
        if not self._autosync or self._sync.free:
            return
        try:
            await self._sync.check()
        except BackendError as exc:
            self._ensure_open()
            self._sync.raise_if_stale(exc)

    def _check_key(self, key: object) -> None:
        if not isinstance(key, str):
            raise TypeError(f"keys are str, not {type(key).__name__}")
        if not key:
            raise InvalidKeyError("keys must not be empty")
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(f"the key is not valid unicode text: {exc.reason}") from None
        if size > self._backend.max_key_bytes:
            raise InvalidKeyError(
                f"the key is {size} bytes long; this store takes {self._backend.max_key_bytes}"
            )

    def _encode(self, key: str, value: object) -> bytes:
        try:
            raw = self._codec.encode(value)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise EncodeError(f"cannot encode the value for key {key!r}: {exc}") from exc
        if not isinstance(raw, bytes):
            raise EncodeError(f"the codec returned {type(raw).__name__}, not bytes")
        limit = self._backend.max_value_bytes
        if limit is not None and len(raw) > limit:
            raise ValueTooLargeError(
                f"the value for key {key!r} is {len(raw)} bytes; this store takes {limit}"
            )
        return raw

    def _decode(self, key: str, raw: bytes) -> Any:
        try:
            return self._codec.decode(raw)
        except Exception as exc:
            raise DecodeError(key, f"{type(exc).__name__}: {exc}") from exc


_BACKEND_MEMBERS = (
    "max_key_bytes",
    "max_value_bytes",
    "poll_interval",
    "start",
    "aclose",
    "load",
    "changes_since",
    "set",
    "pop",
    "setdefault",
    "update",
    "clear",
    "compare_and_set",
)
