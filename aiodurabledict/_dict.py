"""``AsyncDurableDict``: the public API over a ``Cache`` (the values) and a ``Syncer`` (their freshness).

Reads come from one plain dict that changes are applied to in place, so a read costs a dict lookup.
Writes go to the store first and then into the cache at the version and token the store gave them.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Self, overload

from typing_extensions import TypeVar

from ._backend import Backend, Delta, DroppableBackend
from ._cache import Cache
from ._changes import DEFAULT_BUFFER, ChangeStream
from ._codecs import Codec, JSONCodec
from ._lifecycle import Lifecycle, State
from ._snapshot import bootstrap_delta
from ._status import StatusBoard, StatusStream
from ._types import MISSING, Missing, Status
from ._view import CachedView
from .errors import (
    BackendError,
    DecodeError,
    EncodeError,
    InvalidKeyError,
    ReplicationError,
    ValueTooLargeError,
)

__all__ = ["AsyncDurableDict", "State"]


# Unparametrised dicts hold Any, so `MemoryDict()` needs no annotation to type-check.
V = TypeVar("V", default=Any)
T = TypeVar("T")

log = logging.getLogger("aiodurabledict")

_NO_DEFAULT: Any = object()
# Rounds of compare_and_set when the stored bytes decode to the expected value but differ from
# its encoding (another writer's formatting): the swap is retried against the exact stored bytes.
_CAS_ROUNDS = 3


class AsyncDurableDict(CachedView[V]):
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
    - ``bootstrap``: values to open on when the store cannot be reached at ``open()`` (interrupted
      until it answers; never confirmed, so ``max_staleness`` counts them stale at once).
    - ``snapshot``: a file path. The confirmed content is written there (atomically, at most once a
      second, owner-readable only); when the store cannot be reached at ``open()`` the dict opens on
      it (stale from when it was written). Without ``bootstrap`` or a readable snapshot, ``open()``
      fails when the store cannot be reached. Either is replaced by the store's content as soon as
      the store answers.
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
        bootstrap: Mapping[str, Any] | None = None,
        snapshot: str | os.PathLike[str] | None = None,
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
        self._cache = Cache(self._codec)
        self._data = self._cache.data
        self._view = MappingProxyType(self._data)
        self._board = StatusBoard(Status(False, False, False, time.time(), None, 0))
        self._life = Lifecycle(
            backend,
            self._cache,
            self._board,
            name=f"{type(self).__name__}({backend!r})",
            timeout=timeout,
            options={
                "timeout": timeout,
                "heartbeat": heartbeat,
                "poll_interval": interval,
                "polled": polled,
                "max_staleness": max_staleness,
                "watch": watch,
            },
            # Encoded now, so that a value the codec refuses fails here, not at the worst moment.
            bootstrap=None if bootstrap is None else bootstrap_delta(bootstrap, self._codec),
            snapshot=snapshot,
        )
        self._sync = self._life.sync
        self._streams: weakref.WeakSet[ChangeStream[Any]] = weakref.WeakSet()
        self._changes_seen = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> Self:
        """Load every entry and start the watcher. Opening an open dict does nothing; concurrent
        callers share one opening.

        Raises ``BackendError`` when the store cannot be reached (the dict may be opened again;
        with ``bootstrap`` or a snapshot it opens on those instead), ``NotOpenError`` when it was
        closed (a closed dict stays closed).
        """
        try:
            await self._life.open()
        finally:
            # The syncer of this opening (the hot path reads it without going through the lifecycle).
            self._sync = self._life.sync
        return self

    async def aclose(self) -> None:
        """Stop the watcher and release what the dict made; the user's client stays open. Idempotent.

        Called while ``open()`` runs in another task, it waits for it and leaves the dict closed
        (``open()`` then raises ``NotOpenError``). In a forked child it only forgets the dict.
        """
        await self._life.aclose(self._streams)

    close = aclose

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        life = getattr(self, "_life", None)
        if life is not None:
            life.finalize(
                lambda: warnings.warn(
                    f"{self!r} was never closed", ResourceWarning, stacklevel=3, source=self
                )
            )

    def _ensure_open(self) -> None:
        self._life.ensure_open()

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
        await self._place(await self._call("set", self._backend.set(key, raw)))

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
        delta, old = await self._call("pop", self._backend.pop(key))
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
        delta, stored = await self._call("setdefault", self._backend.setdefault(key, raw))
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
            await self._place(await self._call("update", self._backend.update(items)))

    async def clear(self) -> None:
        """Remove every entry."""
        self._ensure_open()
        await self._place(await self._call("clear", self._backend.clear()))

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
            delta, swapped = await self._call(
                "compare_and_set", self._backend.compare_and_set(key, expected_raw, new_raw)
            )
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

    async def drop(self) -> None:
        """Remove every trace of the dict from its store (values, version, history, change log),
        then close it. Other dicts open on it find it empty at their next check.

        Raises ``TypeError`` when the store cannot drop a dict, ``BackendError`` when it fails.
        """
        self._ensure_open()
        backend = self._backend
        if not isinstance(backend, DroppableBackend):
            raise TypeError(f"{type(backend).__name__} cannot drop a dict")
        await self._call("drop", backend.drop())
        await self.aclose()

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

    def changes(self, *, buffer: int = DEFAULT_BUFFER) -> ChangeStream[V]:
        """Every change the cache applies from now on (local and remote writes), until the dict closes.

        Up to ``buffer`` changes wait for a slow consumer; one that falls further behind receives a
        ``Change`` with ``lost`` set (the number dropped) and should take ``await d.snapshot()``.
        Memory stays bounded, and a stream nobody holds any more is unregistered.
        """
        stream: ChangeStream[V] = ChangeStream(self._cache.listeners, buffer)
        self._streams.add(stream)
        return stream

    @property
    def codec(self) -> Codec:
        """How this dict turns values into bytes and back."""
        return self._codec

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
    def status(self) -> Status:
        """Where the cache stands: its ``Health`` and since when, whether the watcher is connected,
        since when the cache may be stale, the last failure."""
        return self._sync.status()

    def on_status(self, callback: Callable[[Status], None]) -> Callable[[], None]:
        """Call ``callback`` with the new ``Status`` each time the state changes (initializing, live,
        interrupted, stale, closed); returns a function that unsubscribes. Callbacks run in the
        event loop and must not block; an exception from one is logged."""
        return self._board.subscribe(callback)

    def status_changes(self) -> AsyncIterator[Status]:
        """Every change of state from now on, as an async iterator that ends once the dict closed."""
        return StatusStream(self._board)

    async def wait_live(self, timeout: float | None = None) -> None:
        """Return once the dict is live: its watcher follows the store and the cache is confirmed.

        Raises ``TimeoutError`` after ``timeout`` seconds, ``NotOpenError`` when not open or closed
        meanwhile.
        """
        self._ensure_open()
        await self._board.wait_live(timeout)

    def __repr__(self) -> str:
        keys = dict.__len__(self._data)
        return f"<{type(self).__name__} {self._life.state.value} version={self._cache.version} keys={keys}>"

    # -- internals ---------------------------------------------------------------------------------

    async def _call(self, operation: str, aw: Any) -> Any:
        """One store call for the application, bounded by ``timeout``; a closed dict says so."""
        try:
            return await self._sync.call(aw, self._timeout, operation)
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
        limit = self._backend.max_key_bytes
        if limit is not None and size > limit:
            raise InvalidKeyError(f"the key is {size} bytes long; this store takes {limit}")

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
