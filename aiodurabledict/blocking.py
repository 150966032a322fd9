"""For code that is not async (Django and Flask views, Celery tasks, scripts): a blocking dict.

``open_dict(url, **opts)`` returns a dict that is already open and loaded, as durabledict's
constructors were, speaking durabledict's own API: ``d[k] = v``, ``d[k]``, ``del d[k]``, ``k in d``,
``len(d)``, iteration, ``keys()``/``values()``/``items()``, ``dict(d)``, ``get``, ``setdefault``,
``pop``, ``update``, ``sync()``, ``last_updated()``. ``wrap(async_dict)`` does the same for a dict
built by hand (unopened). ``close()`` or ``with`` ends it.

How it works: every dict of the process shares one event loop in a background thread. Writes and
syncs run there; reads are served from the cache in the caller's thread,
with no hop while a push watcher keeps the cache live (``autosync``: otherwise a read checks the store
first, as durabledict did). Any number of threads may use a dict at once.

- After a fork (gunicorn, uwsgi), the child starts its own loop thread at first use. A dict opened
  with ``open_dict`` before the fork reopens in the child at its first use; a wrapped one refuses
  (``NotOpenError``), as the async dict does.
- At interpreter exit the open dicts are closed and the loop thread stopped.
- When the store cannot be reached, reads serve the last known values (until ``max_staleness``, if
  given, passes: then they raise ``StaleError``), as the async dict's do; writes raise
  ``BackendError``. After ``close()`` reads serve the last values; writes raise ``NotOpenError``.
- Called from inside a running event loop (async code), every blocking call raises ``RuntimeError``
  instead of deadlocking: use the async dict there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from typing import Any, ClassVar, Generic, Self, TypeVar, Unpack, overload

from ._dict import AsyncDurableDict
from ._types import DictOptions, Missing, Status
from .errors import BackendError, NotOpenError, StaleError

__all__ = ["BlockingDict", "open_dict", "run", "wrap"]

V = TypeVar("V")
T = TypeVar("T")

_NO_DEFAULT: Any = object()


# Bumped in a forked child: a dict compares it on each read that is not live (cheaper than asking
# the pid; a dict opened before the fork is never live in the child).
_forks = [0]
# Held while a dict opened before a fork reopens in the child: its threads wait for one reopening.
_reopening = [threading.Lock()]


def _forked() -> None:
    _forks[0] += 1
    _reopening[0] = threading.Lock()


os.register_at_fork(after_in_child=_forked)


class _Loop:
    """The process's one event loop, run by a daemon thread started at first use (again in a forked
    child: threads do not survive a fork, and their loop must not be touched there)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fork = _forks[0]

    def run(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``func(*args)`` on the loop and wait for its result (or exception).

        The caller waits on a bare lock that the task's completion releases: about a third cheaper
        than ``run_coroutine_threadsafe`` and its ``concurrent.futures`` condition.
        """
        _refuse_inside_a_loop()
        loop = self._running()
        coro = func(*args)
        done = threading.Lock()
        done.acquire()
        outcome: list[asyncio.Future[T] | BaseException] = []

        def finished(task: asyncio.Future[T]) -> None:
            outcome.append(task)
            done.release()

        def start() -> None:
            try:
                loop.create_task(coro).add_done_callback(finished)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                coro.close()
                outcome.append(exc)
                done.release()

        try:
            loop.call_soon_threadsafe(start)
        except BaseException:
            coro.close()
            raise
        done.acquire()
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result.result()

    def _running(self) -> asyncio.AbstractEventLoop:
        if self._fork != _forks[0]:
            self._lock = threading.Lock()
            self._loop, self._thread, self._fork = None, None, _forks[0]
        loop = self._loop
        if loop is None:
            with self._lock:
                if self._loop is None:
                    started = threading.Event()
                    self._loop = asyncio.new_event_loop()
                    self._thread = threading.Thread(
                        target=self._serve, args=(self._loop, started), name="aiodurabledict", daemon=True
                    )
                    self._thread.start()
                    started.wait()
                loop = self._loop
        return loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        """Stop the loop thread (at exit, after the dicts closed)."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None or self._fork != _forks[0]:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


_loop = _Loop()
_open_dicts: weakref.WeakValueDictionary[int, BlockingDict[Any]] = weakref.WeakValueDictionary()


def run(func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Run ``func(*args)`` (a coroutine function) on the shared loop thread and wait for its result:
    for the async dict's calls the blocking dict does not mirror, e.g.
    ``blocking.run(d.async_dict.wait_live, 5)``. Raises ``RuntimeError`` inside a running loop."""
    return _loop.run(func, *args)


def _refuse_inside_a_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "a blocking aiodurabledict call inside a running event loop would block it: use the async dict "
        "(aiodurabledict.open_dict) in async code"
    )


@atexit.register
def _close_everything() -> None:
    for d in list(_open_dicts.values()):
        # At exit, each dict closes as well as it can; one failing must not keep the others open.
        with contextlib.suppress(Exception):
            d.close()
    _loop.stop()


class BlockingDict(Generic[V]):
    """A blocking dict over an ``AsyncDurableDict`` (see the module docstring)."""

    def __init__(
        self,
        async_dict: AsyncDurableDict[V],
        *,
        autosync: bool = True,
        reopen: Callable[[], AsyncDurableDict[V]] | None = None,
    ) -> None:
        self._async = async_dict
        self._view = async_dict.view
        self._autosync = autosync
        self._reopen = reopen
        self._fork = _forks[0]
        self._pid = os.getpid()
        self._closed = False
        # last_updated() of the dicts this one replaced (after a fork): it never goes down.
        self._before = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def _run(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run a coroutine function of the async dict on the shared loop and wait for it."""
        return _loop.run(func, *args)

    def open(self) -> Self:
        """Open and load (on the shared loop thread); returns the dict."""
        self._run(self._async.open)
        _open_dicts[id(self)] = self
        return self

    def close(self) -> None:
        """Stop following the store; the dict's reads then serve its last values. Idempotent."""
        self._closed = True
        _open_dicts.pop(id(self), None)
        if self._fork == _forks[0]:
            self._run(self._async.aclose)

    def drop(self) -> None:
        """Remove every trace of the dict from its store (values, version, history), then close it.

        Raises ``TypeError`` when the store cannot drop a dict, ``BackendError`` when it fails.
        """
        self._run(self._current().drop)
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _current(self) -> AsyncDurableDict[V]:
        """The async dict, reopened here first if it was opened in the parent of a fork."""
        if self._fork != _forks[0] and not self._closed:
            with _reopening[0]:
                # Threads of the child wait for one reopening; the new dict is swapped in only once
                # it is open, so that no thread reads the parent's (refusing) one meanwhile.
                if self._fork != _forks[0]:
                    self._reopen_here()
        return self._async

    def _reopen_here(self) -> None:
        if self._reopen is None:
            raise NotOpenError("this dict was opened in a parent process; open a new one after the fork")
        before = self.last_updated()
        fresh = self._reopen()
        self._run(fresh.open)
        self._async, self._view, self._before = fresh, fresh.view, before
        self._pid = os.getpid()
        self._fork = _forks[0]
        _open_dicts[id(self)] = self

    def _fresh(self) -> AsyncDurableDict[V]:
        """The async dict, its cache checked against the store first unless a live watcher keeps it
        (or the dict is closed). A store out of reach leaves the last known values served."""
        d = self._current()
        if self._autosync and not d.live and not self._closed:
            try:
                self._run(d.sync)
            except StaleError:
                raise
            except BackendError:
                # As the async dict's autosync reads: the last known values (the watcher reports it).
                pass
        return d

    # -- reads: the cache, in the caller's thread ----------------------------------------------------

    def __getitem__(self, key: str) -> V:
        # The hot path, one attribute test: a live watcher (never the case for a dict opened before
        # a fork, in the child) means a lookup, no hop; anything else goes through _fresh().
        if not self._async.live:
            self._fresh()
        return self._view[key]

    @overload
    def get(self, key: str) -> V | None: ...

    @overload
    def get(self, key: str, default: T) -> V | T: ...

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``; ``DecodeError`` if its stored value is undecodable."""
        if not self._async.live:
            self._fresh()
        try:
            return self._view[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in self._fresh()

    def __len__(self) -> int:
        return len(self._fresh())

    def __iter__(self) -> Iterator[str]:
        return iter(self._fresh())

    def keys(self) -> KeysView[str]:
        """The keys (iterated over a snapshot)."""
        return self._fresh().keys()

    def values(self) -> ValuesView[V]:
        """The values (iterated over a snapshot)."""
        return self._fresh().values()

    def items(self) -> ItemsView[str, V]:
        """The ``(key, value)`` pairs (iterated over a snapshot)."""
        return self._fresh().items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BlockingDict):
            return self._fresh() == other._fresh()
        return self._fresh() == other

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # mutable: unhashable, as dict is

    @property
    def view(self) -> Mapping[str, V]:
        """The live read-only mapping of the cache: never checks, never hops (for hot loops). After a
        fork, take it again from the dict: the parent's refuses."""
        if self._fork != _forks[0]:
            self._current()
        return self._view

    # -- writes and syncs: on the shared loop ----------------------------------------------------------

    def __setitem__(self, key: str, value: V) -> None:
        self._run(self._current().set, key, value)

    def __delitem__(self, key: str) -> None:
        self._run(self._current().delete, key)

    def set(self, key: str, value: V) -> None:
        """``d[key] = value``."""
        self[key] = value

    def setdefault(self, key: str, default: V | None = None) -> V:
        """Store ``default`` unless ``key`` exists (atomically, across processes); the value stored."""
        return self._run(self._current().setdefault, key, default)

    @overload
    def pop(self, key: str) -> V: ...

    @overload
    def pop(self, key: str, default: T) -> V | T: ...

    def pop(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """Remove ``key`` and return its value; ``default`` or ``KeyError`` when absent."""
        d = self._current()
        if default is _NO_DEFAULT:
            return self._run(d.pop, key)
        return self._run(d.pop, key, default)

    def update(self, mapping: Mapping[str, V] | Iterable[tuple[str, V]] = (), /, **kwargs: V) -> None:
        """Write many entries in one atomic batch where the store allows it."""
        items = dict(mapping, **kwargs)
        self._run(self._current().update, items)

    def clear(self) -> None:
        """Remove every entry."""
        self._run(self._current().clear)

    def compare_and_set(self, key: str, expected: V | Missing, new: V | Missing) -> bool:
        """Store ``new`` if the stored value equals ``expected`` (``MISSING``: absent); atomic."""
        return self._run(self._current().compare_and_set, key, expected, new)

    def sync(self) -> bool:
        """Bring the cache up to the store (read-after-commit); ``True`` when anything changed."""
        return self._run(self._current().sync)

    def last_updated(self) -> int:
        """A number that is truthy from the start and grows with every change the cache applies
        (durabledict's: compare two readings to know whether anything changed)."""
        return self._before + 1 + self._async.changes_applied

    # -- state -------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The store version the cache reflects."""
        return self._current().version

    @property
    def status(self) -> Status:
        """Where the cache stands against the store."""
        return self._current().status

    @property
    def live(self) -> bool:
        """A push watcher keeps the cache live: reads need no check."""
        return self._current().live

    @property
    def async_dict(self) -> AsyncDurableDict[V]:
        """The async dict underneath: its reads from any thread, its awaitable calls only on the
        shared loop (``run()``)."""
        return self._current()

    def __repr__(self) -> str:
        return f"<BlockingDict {self._async!r}>"


def open_dict(url: str, **opts: Unpack[DictOptions]) -> BlockingDict[Any]:
    """A blocking dict on the store ``url`` names, open and loaded when this returns.

    ``autosync`` (default ``True``): reads are fresh (no hop while a push watcher is live, a check of
    the store otherwise). ``autosync=False`` with ``watch=False`` is durabledict's manual mode: the
    cache moves only at ``sync()``. Other options are the async dict's.
    """
    from ._urls import open_dict as open_async

    autosync = opts.get("autosync", True)
    options: DictOptions = {**opts, "autosync": False}

    def build() -> AsyncDurableDict[Any]:
        return open_async(url, **options)

    return BlockingDict(build(), autosync=autosync, reopen=build).open()


def wrap(async_dict: AsyncDurableDict[V], *, autosync: bool = True) -> BlockingDict[V]:
    """A blocking dict over ``async_dict`` (unopened: it is opened on the shared loop thread)."""
    return BlockingDict(async_dict, autosync=autosync).open()
