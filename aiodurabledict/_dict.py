"""``AsyncDurableDict``: a local cache of a durable store, kept fresh by versioned deltas.

Reads come from one plain dict that changes are applied to in place, so a read costs a dict lookup and
readers in other threads never see a present key go missing during a reload. Writes go to the store
first and then into the cache with the version the store gave them; every key remembers that version,
so a late or older answer can never overwrite a newer value (the cache's version only grows).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, Self, overload

from typing_extensions import TypeVar

from ._backend import Backend, Delta
from ._codecs import Codec, JSONCodec
from ._types import MISSING, Change, Status
from ._watcher import Backoff, watch
from .errors import (
    BackendError,
    DecodeError,
    DurableDictError,
    EncodeError,
    InvalidKeyError,
    NotOpenError,
    StaleError,
    ValueTooLargeError,
)

__all__ = ["AsyncDurableDict"]

# Unparametrised dicts hold Any, so `MemoryDict()` needs no annotation to type-check.
V = TypeVar("V", default=Any)
T = TypeVar("T")

log = logging.getLogger("aiodurabledict")

_NEW, _OPEN, _CLOSED = "new", "open", "closed"
_NO_DEFAULT: Any = object()

# Bumped in a forked child: a dict opened before the fork must not serve a frozen copy there.
_fork_generation = 0


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork)


async def _stop(task: asyncio.Task[None], *, tries: int = 20) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a client library swallowed the first.

    (Python 3.11's ``asyncio.timeout`` can lose a cancellation that races its own deadline.)
    """
    for _ in range(tries):
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
        if task.done():
            if not task.cancelled() and task.exception() is not None:
                log.debug("the watcher ended with %r", task.exception())
            return
    log.warning("the watcher did not stop after %d cancellations; leaving it behind", tries)


class _Cache(dict[str, Any]):
    """The cache itself; a key whose stored value cannot be decoded raises ``DecodeError`` on lookup."""

    __slots__ = ("bad",)

    def __init__(self) -> None:
        super().__init__()
        self.bad: dict[str, str] = {}

    def __missing__(self, key: str) -> Any:
        reason = self.bad.get(key)
        if reason is not None:
            raise DecodeError(key, reason)
        raise KeyError(key)


class _ChangeStream(Generic[V]):
    """An async iterator over the changes a dict applies, from its creation until the dict closes."""

    def __init__(self, owner: AsyncDurableDict[V]) -> None:
        self._owner = owner
        self._queue: asyncio.Queue[Change[V] | None] = asyncio.Queue()
        owner._streams.add(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change[V]:
        if self._owner._state == _CLOSED and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._owner._streams.discard(self)
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop receiving changes."""
        self._owner._streams.discard(self)


class AsyncDurableDict(Generic[V]):
    """A dictionary kept in a durable, shared store and cached in process memory.

    ``backend`` is any object that follows the ``Backend`` protocol (bytes in and out, a version that
    only grows). Options, all keyword-only:

    - ``codec``: how values become bytes (default ``JSONCodec()``).
    - ``autosync``: ``await get()`` and ``snapshot()`` sync first (free while the watcher is live).
    - ``watch``: run a background watcher while open.
    - ``max_staleness``: seconds the cache may go unconfirmed before ``get``/``sync`` raise ``StaleError``;
      ``None`` serves the last known values forever.
    - ``heartbeat``: seconds between the watcher's version checks; bounds how late a frozen store or a
      lost notice is noticed.
    - ``poll_interval``: seconds between checks for stores that cannot push (default: the backend's).
      Given (or suggested by the backend) for a store that pushes, checks still come at least this
      often, as a safety net for lost notices.
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
        for name, value in (("heartbeat", heartbeat), ("timeout", timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if max_staleness is not None and not max_staleness > 0:
            raise ValueError(f"max_staleness must be positive or None, not {max_staleness!r}")
        polled = poll_interval is not None or hasattr(backend, "poll_interval")
        if poll_interval is None:
            poll_interval = float(getattr(backend, "poll_interval", 1.0))
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        # Where polling is asked for (or the store suggests it) push is an addition: checks keep
        # coming at least every poll_interval, so a lost notice costs no more than that.
        self._check_interval = min(heartbeat, poll_interval) if polled else heartbeat
        self._backend = backend
        self._codec: Codec = codec if codec is not None else JSONCodec()
        self._autosync = autosync
        self._watch = watch
        self._max_staleness = max_staleness
        self._heartbeat = heartbeat
        self._poll_interval = poll_interval
        self._timeout = timeout
        # The watcher's own checks must notice a frozen store quickly, whatever the write timeout.
        self._check_timeout = min(timeout, max(heartbeat, 1.0))
        # Keys up to this many characters fit the store's limit whatever their UTF-8 length.
        self._short_key = backend.max_key_bytes // 4

        self._data = _Cache()
        self._view: Mapping[str, V] = MappingProxyType(self._data)
        self._kver: dict[str, int] = {}
        self._version = 0
        self._loaded = False
        self._state = _NEW
        self._generation = -1
        self._watcher: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._resync_event: asyncio.Event | None = None
        # Gaps (lost or unplaceable notices) seen and filled: syncing is free only when they match.
        self._gaps = 0
        self._gaps_filled = 0
        self._streams: set[_ChangeStream[V]] = set()
        self._changes = 0
        self._changes_seen = 0

        self._live = False
        self._connected = False
        self._since = time.time()
        self._confirmed_at = time.monotonic()
        self._confirmed_wall = time.time()
        self._error: str | None = None
        self._fail_until = 0.0
        self._last_failure: BackendError | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> Self:
        """Load every entry and start the watcher. Opening an open dict does nothing.

        Raises ``BackendError`` when the store cannot be reached; the dict then stays closed.
        """
        if self._state == _OPEN:
            self._ensure_open()
            return self
        self._reset()
        try:
            await self._call(self._backend.start(), self._timeout)
            delta = await self._call(self._backend.load(), self._timeout)
        except BaseException:
            # Whatever the backend made (an owned client, a connection) must not outlive a failed open.
            await self._backend.aclose()
            raise
        self._apply(delta)
        self._confirm()
        self._generation = _fork_generation
        self._state = _OPEN
        self._set_live(not self._watch)
        if self._watch:
            self._watcher = asyncio.create_task(
                watch(
                    self,
                    getattr(self._backend, "subscribe", None),
                    heartbeat=self._check_interval,
                    poll_interval=self._poll_interval,
                    backoff=Backoff(cap=max(1.0, min(5.0, self._heartbeat * 2))),
                ),
                name=f"aiodurabledict watcher {self!r}",
            )
        return self

    async def aclose(self) -> None:
        """Stop the watcher and release what the dict made; the user's client stays open. Idempotent."""
        if self._state != _OPEN:
            return
        self._state = _CLOSED
        self._set_live(False)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await _stop(watcher)
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await _stop(inflight)
        for stream in list(self._streams):
            stream._queue.put_nowait(None)
        self._streams.clear()
        await self._backend.aclose()

    close = aclose

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_state", None) == _OPEN and self._generation == _fork_generation:
            warnings.warn(f"{self!r} was never closed", ResourceWarning, stacklevel=1, source=self)

    def _reset(self) -> None:
        self._data.clear()
        self._data.bad.clear()
        self._kver.clear()
        self._version = 0
        self._loaded = False
        self._watcher = None
        self._inflight = None
        self._resync_event = asyncio.Event()
        self._gaps = self._gaps_filled = 0
        self._fail_until = 0.0
        self._last_failure = None

    def _ensure_open(self) -> None:
        if self._state != _OPEN:
            what = "closed" if self._state == _CLOSED else "not open yet"
            raise NotOpenError(f"{type(self).__name__} is {what}: use `async with` or `await d.open()`")
        if self._generation != _fork_generation:
            raise NotOpenError(
                f"{type(self).__name__} was opened in a parent process; open a new dict after the fork"
            )

    # -- the awaitable API -------------------------------------------------------------------------

    @overload
    async def get(self, key: str) -> V | None: ...

    @overload
    async def get(self, key: str, default: T) -> V | T: ...

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``; syncs first when ``autosync``.

        Raises ``DecodeError`` when the stored value cannot be decoded, ``StaleError`` past
        ``max_staleness``, ``NotOpenError`` when not open.
        """
        if self._live and self._gaps_filled == self._gaps and self._generation == _fork_generation:
            # The hot path: the watcher keeps the cache current, so this is a dict lookup.
            if type(key) is not str or not key or len(key) > self._short_key:
                self._check_key(key)
        else:
            self._check_key(key)
            await self._autosync_quietly()
        try:
            return self._data[key]
        except KeyError:
            return default

    async def set(self, key: str, value: V) -> None:
        """Write ``value`` durably, then into the cache as the codec round-trips it.

        Raises ``EncodeError``/``ValueTooLargeError`` before anything is sent, ``BackendError`` when
        the store fails (the cache is then unchanged).
        """
        self._ensure_open()
        self._check_key(key)
        raw = self._encode(key, value)
        await self._commit(await self._call(self._backend.set(key, raw), self._timeout))

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
        result = await self._call(self._backend.pop(key), self._timeout)
        if result is None:
            # Absent in the store: forget any copy the cache still held.
            if key in self._data or key in self._data.bad:
                self._put(key, None, self._version)
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        delta, old = result
        await self._commit(delta)
        return self._decode(key, old)

    async def setdefault(self, key: str, default: V | None = None) -> V:
        """Atomically store ``default`` unless ``key`` exists; return the value now stored.

        Of any number of concurrent callers (in any process) exactly one writes.
        """
        self._ensure_open()
        self._check_key(key)
        raw = self._encode(key, default)
        delta, stored = await self._call(self._backend.setdefault(key, raw), self._timeout)
        await self._commit(delta)
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
            await self._commit(await self._call(self._backend.update(items), self._timeout))

    async def clear(self) -> None:
        """Remove every entry."""
        self._ensure_open()
        await self._commit(await self._call(self._backend.clear(), self._timeout))

    async def sync(self) -> bool:
        """Bring the cache up to the store; ``True`` when anything changed since the last ``sync()``.

        Free while the watcher follows the store live; otherwise one round trip, shared by every
        concurrent caller. Raises ``BackendError`` when the store cannot be reached (the cache keeps
        its values), ``StaleError`` once the cache has gone unconfirmed longer than ``max_staleness``.
        """
        self._ensure_open()
        if not self._sync_is_free():
            try:
                await self._refresh()
            except BackendError as exc:
                self._raise_if_stale(exc)
                raise
        changed = self._changes != self._changes_seen
        self._changes_seen = self._changes
        return changed

    async def snapshot(self) -> dict[str, V]:
        """A consistent copy of the cache (undecodable entries left out), synced first when ``autosync``."""
        await self._autosync_quietly()
        return dict(self._data)

    def changes(self) -> AsyncIterator[Change[V]]:
        """Every change the cache applies from now on (local and remote writes), until the dict closes."""
        return _ChangeStream(self)

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
    def version(self) -> int:
        """The store version the cache reflects; it only grows."""
        return self._version

    @property
    def undecodable(self) -> frozenset[str]:
        """Keys whose stored value the codec could not decode (reading them raises ``DecodeError``)."""
        return frozenset(self._data.bad)

    @property
    def status(self) -> Status:
        """Whether the watcher is connected, and since when the cache may be stale."""
        return Status(
            open=self._state == _OPEN,
            watching=self._watcher is not None and not self._watcher.done(),
            connected=self._connected,
            since=self._since,
            stale_since=None if self._live else self._confirmed_wall,
            version=self._version,
            error=self._error,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state} version={self._version} keys={len(self._data)}>"

    # -- internals: calls, keys, codec ----------------------------------------------------------------

    async def _call(self, aw: Awaitable[T], timeout: float) -> T:
        """Await one backend call, bounded in time, with every failure as ``BackendError``."""
        try:
            async with asyncio.timeout(timeout):
                return await aw
        except DurableDictError:
            raise
        except TimeoutError as exc:
            raise BackendError(f"the store did not answer within {timeout:g} s") from exc
        except Exception as exc:
            raise BackendError(f"the store failed: {type(exc).__name__}: {exc}") from exc

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

    # -- internals: applying deltas -------------------------------------------------------------------

    def _apply(self, delta: Delta) -> None:
        """Apply what the store said, never moving a key or the cache to an older version."""
        if self._loaded and delta.version <= self._version:
            return
        if delta.full:
            self._apply_full(delta)
            return
        version = delta.version
        kver = self._kver
        for key, raw in delta.changes.items():
            if kver.get(key, -1) >= version:
                continue
            kver[key] = version
            self._put(key, raw, version)
        if delta.prev is not None and delta.prev <= self._version:
            self._advance(version)

    async def _commit(self, delta: Delta) -> None:
        """Apply what one of our writes committed.

        A commit at or below the cache's version means the store went back in time (it lost its
        latest writes, or was restored): reload, so that this write and the store's state show.
        """
        if self._loaded and delta.prev is not None and delta.version <= self._version:
            await self._refresh_once(self._timeout)
        else:
            self._apply(delta)

    def _rewind(self, delta: Delta) -> None:
        """Take the store's whole content at an older version: the store itself went back."""
        log.warning(
            "the store went back from version %d to %d (it lost writes or was restored); reloaded",
            self._version,
            delta.version,
        )
        self._kver.clear()
        self._version = delta.version
        self._apply_full(delta)

    def _apply_full(self, delta: Delta) -> None:
        version = delta.version
        kver = self._kver
        data = self._data
        if not self._loaded and not data and not data.bad and not self._streams:
            # The first load: nothing to compare, nobody listening; keep it a tight loop.
            codec = self._codec
            for key, raw in delta.changes.items():
                if raw is None:
                    continue
                try:
                    data[key] = codec.decode(raw)
                except Exception as exc:  # noqa: BLE001 - any codec failure marks the key, not the load
                    data.bad[key] = f"{type(exc).__name__}: {exc}"
        else:
            # Add and replace before removing, so a key present before and after never goes missing.
            for key, raw in delta.changes.items():
                if kver.get(key, -1) <= version:
                    self._put(key, raw, version)
            gone = [k for k in (*data, *data.bad) if k not in delta.changes]
            for key in gone:
                if kver.get(key, -1) <= version:
                    self._put(key, None, version)
        self._loaded = True
        self._advance(version)

    def _advance(self, version: int) -> None:
        if version > self._version or not self._loaded:
            self._version = version
        if self._kver:
            self._kver = {k: v for k, v in self._kver.items() if v > self._version}

    def _put(self, key: str, raw: bytes | None, version: int) -> None:
        data = self._data
        old: Any = data.get(key, MISSING)
        if raw is None:
            if old is MISSING and key not in data.bad:
                return
            data.pop(key, None)
            data.bad.pop(key, None)
            new: Any = MISSING
        else:
            try:
                new = self._codec.decode(raw)
            except Exception as exc:  # noqa: BLE001 - any codec failure marks the key, not the load
                # One bad value must not stop the rest: remember why, raise when it is read.
                data.pop(key, None)
                data.bad[key] = f"{type(exc).__name__}: {exc}"
                self._changes += 1
                return
            data.bad.pop(key, None)
            data[key] = new
            if old is not MISSING and type(old) is type(new) and old == new:
                return
        self._changes += 1
        if self._streams:
            change: Change[V] = Change(key, old, new, version)
            for stream in self._streams:
                stream._queue.put_nowait(change)

    # -- internals: sync, the watcher's side ----------------------------------------------------------

    @property
    def _resync_needed(self) -> asyncio.Event:
        assert self._resync_event is not None
        return self._resync_event

    async def _refresh(self, *, watcher: bool = False) -> None:
        """One delta sync, shared by every concurrent caller (single flight)."""
        if not watcher and time.monotonic() < self._fail_until and self._last_failure is not None:
            # The store failed a moment ago: answer at once instead of piling on.
            raise BackendError(str(self._last_failure)) from self._last_failure.__cause__
        task = self._inflight
        if task is None:
            task = asyncio.ensure_future(
                self._refresh_once(self._check_timeout if watcher else self._timeout)
            )
            self._inflight = task
            task.add_done_callback(self._refresh_done)
        await asyncio.shield(task)

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh_once(self, timeout: float) -> None:
        asked = self._version
        call = self._backend.changes_since(asked) if self._loaded else self._backend.load()
        try:
            delta = await self._call(call, timeout)
        except BackendError as exc:
            self._last_failure = exc
            self._fail_until = time.monotonic() + min(1.0, self._heartbeat)
            self._error = str(exc)
            if not self._watch:
                self._set_live(False, exc)
            raise
        if self._loaded and delta.full and delta.version < asked:
            # Asked for what came after `asked`, the store answered with all it has, older: it went back.
            self._rewind(delta)
        else:
            self._apply(delta)
        self._confirm()
        if not self._watch:
            self._set_live(True)

    def _sync_is_free(self) -> bool:
        """The watcher follows the store live with no known gap: ``sync()`` needs no round trip."""
        return self._live and self._gaps_filled == self._gaps

    async def _catch_up(self) -> None:
        """Fetch what lost or incomplete notices left out; until then ``sync()`` is not free."""
        seen = self._gaps
        await self._refresh_once(self._check_timeout)
        self._gaps_filled = seen

    def _on_notice(self, delta: Delta) -> None:
        self._confirm()
        if delta.version <= self._version:
            return
        if delta.complete:
            gap = delta.prev is None or delta.prev > self._version
            self._apply(delta)
            if not gap or delta.version <= self._version:
                return
        # A notice was lost, cannot be placed, or carries no values: fetch what lies between.
        self._gaps += 1
        self._resync_needed.set()

    def _confirm(self) -> None:
        self._confirmed_at = time.monotonic()
        self._confirmed_wall = time.time()
        self._fail_until = 0.0
        self._last_failure = None

    def _set_live(self, live: bool, error: BaseException | None = None) -> None:
        self._live = live and self._watch
        if error is not None:
            self._error = f"{type(error).__name__}: {error}"
        elif live:
            self._error = None
        if live != self._connected:
            self._connected = live
            self._since = time.time()

    def _unconfirmed_for(self) -> float:
        return 0.0 if self._live else time.monotonic() - self._confirmed_at

    def _raise_if_stale(self, cause: BaseException) -> None:
        bound = self._max_staleness
        if bound is not None and self._unconfirmed_for() > bound:
            raise StaleError(
                f"the cache has gone unconfirmed for {self._unconfirmed_for():.1f} s "
                f"(max_staleness={bound:g} s): {cause}"
            ) from cause

    async def _autosync_quietly(self) -> None:
        """Sync for a read: on failure serve the last known values, unless past ``max_staleness``."""
        self._ensure_open()
        if not self._autosync:
            return
        try:
            await self.sync()
        except StaleError:
            raise
        except BackendError as exc:
            log.debug("serving cached values: %s", exc)
