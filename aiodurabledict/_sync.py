"""Keeping one cache in step with its store: checks, their single flight, gaps, liveness, staleness.

``Syncer`` is what the dict, the watcher and the integrations call. ``check()`` is read-after-commit:
when it returns, every commit that completed before it was called is in the cache. Concurrent callers
share a check only when it was sent after they called, so at most one check runs and one more waits.
A write whose commit cannot be placed in the cache's history checks before it returns; a notice that
cannot be placed is a gap the watcher fills. ``free`` says when a read may skip the check: a push
watcher follows the store live and no gap is open.

The syncer never refers to the dict, so an abandoned dict can be collected while its watcher runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import warnings
from collections.abc import Awaitable
from typing import TypeVar

from . import _observe
from ._backend import Backend, Delta, PushBackend
from ._cache import Cache, OrphanedEntries, Outcome
from ._status import StatusBoard
from ._types import Health, Status
from ._watcher import WatcherTask
from .errors import BackendError, DurableDictError, NotOpenError, StaleError

__all__ = ["Syncer"]

T = TypeVar("T")

log = logging.getLogger("aiodurabledict")

# Answers that cannot be placed because the cache moved while they travelled are asked again; past
# this many, the check reloads everything.
_ASKS = 3
_ABANDONED = object()


class _Flight:
    """One check. Callers may join it until it is sent; ``done`` is made only when someone waits."""

    __slots__ = ("done", "sent")

    def __init__(self) -> None:
        self.sent = False
        self.done: asyncio.Future[object] | None = None

    def future(self) -> asyncio.Future[object]:
        if self.done is None:
            self.done = asyncio.get_running_loop().create_future()
        return self.done

    def finish(self, outcome: object) -> None:
        done = self.done
        if done is None or done.done():
            return
        if isinstance(outcome, BaseException):
            done.set_exception(outcome)
            done.exception()  # retrieved: nobody may be left waiting
        else:
            done.set_result(outcome)


class Syncer:
    """Checks, notices, liveness and staleness of one cache against one backend.

    ``timeout`` bounds a call made for the application; ``check_timeout`` the watcher's own checks
    (short, so that a frozen store is noticed within about a heartbeat).
    """

    def __init__(
        self,
        backend: Backend,
        cache: Cache,
        *,
        name: str,
        timeout: float,
        heartbeat: float,
        poll_interval: float,
        polled: bool,
        max_staleness: float | None,
        watch: bool,
        board: StatusBoard,
    ) -> None:
        self.backend = backend
        self.board = board
        self.cache = cache
        self.name = name
        self.timeout = timeout
        self.check_timeout = min(timeout, max(heartbeat, 1.0))
        self.heartbeat = heartbeat
        self.poll_interval = poll_interval
        self.max_staleness = max_staleness
        self.watch = watch
        # Decided once, by type: a store that pushes is followed, any other is polled.
        self.push: PushBackend | None = backend if isinstance(backend, PushBackend) else None
        # Where polling is asked for (or the store suggests it) push is an addition: checks keep
        # coming at least every poll_interval, so a lost notice costs no more than that.
        self.check_interval = min(heartbeat, poll_interval) if polled and self.push else heartbeat
        self.closed: str | None = None

        self._running: _Flight | None = None
        self._pending: _Flight | None = None
        self._reload = False
        self._gaps = 0
        self._gaps_filled = 0
        self._live = False
        self.connected = False
        self.since = time.time()
        self.error: str | None = None
        self._confirmed_at = time.monotonic()
        self.confirmed_wall = time.time()
        self._fail_until = 0.0
        self._last_failure: BackendError | None = None
        self._down_since: float | None = None
        self.resync = asyncio.Event()
        self._watcher = WatcherTask(self)
        self.orphaned = False
        self._opened = False
        self._stale_timer: asyncio.TimerHandle | None = None
        # Opened on a snapshot or defaults while the store was down: start() is still owed.
        self._needs_start = False
        self._was_lost = False

    # -- what readers ask --------------------------------------------------------------------------

    @property
    def free(self) -> bool:
        """A read may skip the check: a push watcher follows the store live, with no gap open."""
        return self._live and self._gaps_filled == self._gaps and not self._reload and not self.cache.dirty

    def unconfirmed_for(self) -> float:
        """Seconds since the cache was last confirmed against the store: 0 while a watcher follows
        it; without a watcher, the time since the last successful check."""
        if self._live or (self.connected and self.watch):
            return 0.0
        return time.monotonic() - self._confirmed_at

    def raise_if_stale(self, cause: BaseException) -> None:
        """Raise ``StaleError`` from ``cause`` once the cache has gone unconfirmed past ``max_staleness``."""
        bound = self.max_staleness
        if bound is not None and self.unconfirmed_for() > bound:
            raise StaleError(
                f"the cache has gone unconfirmed for {self.unconfirmed_for():.1f} s "
                f"(max_staleness={bound:g} s): {cause}"
            ) from cause

    def ensure_usable(self) -> None:
        """Raise ``NotOpenError`` when the dict was closed, forked away or orphaned."""
        if self.closed is not None:
            raise NotOpenError(self.closed)

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> Status:
        """The cache's ``Status`` now."""
        state = self._state()
        board = self.board.current
        return Status(
            open=self._opened and self.closed is None,
            watching=self.watching,
            connected=self.connected and self.closed is None,
            since=board.since if board.state is state else time.time(),
            stale_since=None if self.unconfirmed_for() == 0.0 else self.confirmed_wall,
            version=self.cache.version,
            error=self.error,
            state=state,
        )

    def _state(self) -> Health:
        if self.closed is not None:
            return Health.CLOSED
        if not self._opened:
            return Health.INITIALIZING
        bound = self.max_staleness
        if bound is not None and self.unconfirmed_for() > bound:
            return Health.STALE
        if self._live or (self.connected and (self.push is None or not self.watch)):
            return Health.LIVE
        if self.error is None:
            return Health.INITIALIZING
        return Health.INTERRUPTED

    def _evaluate(self) -> None:
        """Report the status when its state changed; time the move from interrupted to stale."""
        status = self.status()
        self.board.report(status)
        timer, self._stale_timer = self._stale_timer, None
        if timer is not None:
            timer.cancel()
        unwatched = status.state is Health.LIVE and not self.watch
        if (status.state is Health.INTERRUPTED or unwatched) and self.max_staleness is not None:
            left = self.max_staleness - self.unconfirmed_for()
            with contextlib.suppress(RuntimeError):  # no running loop: a closing dict
                self._stale_timer = asyncio.get_running_loop().call_later(max(left, 0) + 0.01, self._evaluate)

    def mark_open(self) -> None:
        """The dict finished opening."""
        self._opened = True
        _observe.track(self)
        self._evaluate()

    def mark_closed(self, reason: str) -> None:
        """The dict closes (or can no longer be used): say so to every listener."""
        self.closed = reason
        self._live = False
        _observe.untrack(self)
        self._evaluate()

    def size(self) -> int:
        """Keys in the cache (for gauges)."""
        return dict.__len__(self.cache.data)

    # -- checks ------------------------------------------------------------------------------------

    async def check(self, *, watcher: bool = False) -> None:
        """Bring the cache up to the store as of this call (read-after-commit).

        Shares a check that was not yet sent; otherwise waits for the one under way and then sends
        the next, for everybody who came meanwhile. Raises ``BackendError`` (the cache keeps its values).
        """
        if not watcher:
            self._fail_fast()
        while True:
            self.ensure_usable()
            pending = self._pending
            if pending is not None and not pending.sent:
                outcome = await asyncio.shield(pending.future())
                if outcome is _ABANDONED:
                    continue
                return
            flight = self._pending = _Flight()
            try:
                while (running := self._running) is not None:
                    await asyncio.wait([running.future()])
                self.ensure_usable()
                flight.sent = True
                self._running = flight
                await self._check_once(self.check_timeout if watcher else self.timeout)
            except asyncio.CancelledError:
                flight.finish(_ABANDONED)
                raise
            except BaseException as exc:
                flight.finish(exc)
                raise
            else:
                flight.finish(None)
            finally:
                if self._running is flight:
                    self._running = None
                if self._pending is flight:
                    self._pending = None
            return

    def started_without_store(self, cause: BackendError, confirmed_wall: float | None) -> None:
        """The dict opened on a snapshot (confirmed at ``confirmed_wall``) or on defaults (never
        confirmed) because the store could not be reached: interrupted until the store answers."""
        self._needs_start = True
        self.cache.dirty = True
        now_wall, now = time.time(), time.monotonic()
        self.confirmed_wall = confirmed_wall if confirmed_wall is not None else 0.0
        self._confirmed_at = now - (now_wall - confirmed_wall) if confirmed_wall is not None else -math.inf
        self._failed(cause)

    async def ensure_started(self, timeout: float | None = None) -> None:
        """Prepare the store (``backend.start()``) if opening could not."""
        if self._needs_start:
            try:
                await self.call(self.backend.start(), timeout or self.check_timeout, "start")
            except BackendError as exc:
                self._failed(exc)
                raise
            self._needs_start = False

    async def _check_once(self, timeout: float) -> None:
        cache = self.cache
        gaps = self._gaps
        await self.ensure_started(timeout)
        for attempt in range(_ASKS + 1):
            asked = cache.version
            reload = not cache.loaded or cache.dirty or self._reload or attempt == _ASKS
            call = self.backend.load() if reload else self.backend.changes_since(asked)
            try:
                delta = await self.call(call, timeout, "load" if reload else "changes_since")
            except BackendError as exc:
                self._failed(exc)
                raise
            outcome = cache.apply(delta, asked=asked if cache.loaded else None)
            if delta.full:
                _observe.event(self.name, "reload")
            if outcome is Outcome.DIVERGED:
                # The store's token at our version is not ours: it went back in time and moved on.
                self._went_back(asked, delta.version)
                self._reload = True
                continue
            if outcome is Outcome.REWOUND and not self._reload:
                self._went_back(asked, delta.version)
            if reload:
                self._reload = False
            if outcome is not Outcome.BEHIND:
                break
        self._gaps_filled = max(self._gaps_filled, gaps)
        self._confirm()
        _observe.event(self.name, "sync")
        if not self.watch:
            self._set_connected(True)

    async def place(self, delta: Delta) -> None:
        """Apply what one of our writes committed (or read); when it cannot be placed in the cache's
        history, check the store first, so that the write shows when this returns."""
        outcome = self.cache.apply(delta)
        if outcome is Outcome.APPLIED or outcome is Outcome.CURRENT:
            return
        if outcome is Outcome.DIVERGED:
            self._reload = True
        try:
            await self.check()
        except NotOpenError:
            raise
        except BaseException as exc:
            # The write stands in the store; the cache must show it anyway, and be checked soon.
            if outcome is not Outcome.STALE:
                self.cache.force(delta)
            self._gap()
            if not isinstance(exc, BackendError):
                raise
            log.debug("%s: a write could not be placed in the cache's history yet: %s", self.name, exc)

    def on_notice(self, delta: Delta) -> None:
        """A notice from the watcher: applied only when it follows the cache exactly, else a gap."""
        outcome = self.cache.apply(delta)
        if outcome is Outcome.BEHIND or outcome is Outcome.DIVERGED:
            self._gap()
        else:
            self._confirm()
            if outcome is Outcome.APPLIED:
                _observe.event(self.name, "notice")

    def _gap(self) -> None:
        self._gaps += 1
        self.resync.set()
        _observe.event(self.name, "gap")

    async def call(self, aw: Awaitable[T], timeout: float, operation: str = "call") -> T:
        """Await one backend call, bounded in time; a timeout or an ``OSError`` is ``BackendError``."""
        try:
            with _observe.span(self.name, operation):
                async with asyncio.timeout(timeout):
                    return await aw
        except DurableDictError:
            raise
        except TimeoutError as exc:
            raise BackendError(f"the store did not answer within {timeout:g} s") from exc
        except OSError as exc:
            raise BackendError(f"the store failed: {type(exc).__name__}: {exc}") from exc

    def _fail_fast(self) -> None:
        failure = self._last_failure
        if failure is not None and time.monotonic() < self._fail_until:
            # The store failed a moment ago: answer at once instead of piling on.
            raise BackendError(str(failure)) from failure.__cause__

    def _failed(self, exc: BackendError) -> None:
        now = time.monotonic()
        self._last_failure = exc
        self._fail_until = now + min(1.0, self.heartbeat)
        self.error = str(exc)
        if not self.watch:
            self._set_connected(False, exc)
        self._evaluate()
        if self._down_since is None:
            # Once per outage, at WARNING; the retries that follow are DEBUG.
            self._down_since = now
            log.warning("%s: the store is unreachable (%s); serving the last known values", self.name, exc)
        else:
            log.debug("%s: still unreachable: %s", self.name, exc)

    def _went_back(self, was: int, now: int) -> None:
        _observe.event(self.name, "rewind")
        log.warning(
            "%s: the store's history is not the one the cache followed (version %d, now %d): it lost "
            "writes or was restored; reloading everything",
            self.name,
            was,
            now,
        )

    def _confirm(self) -> None:
        now = self._confirmed_at = time.monotonic()
        self.confirmed_wall = time.time()
        self._fail_until = 0.0
        self._last_failure = None
        if self._down_since is not None:
            log.warning("%s: the store answers again, after %.1f s", self.name, now - self._down_since)
            self._down_since = None

    def confirmed(self) -> None:
        """The store answered: the cache is as fresh as the last check (a failed open's first load)."""
        self._confirm()

    # -- liveness, as the watcher reports it -------------------------------------------------------

    def went_live(self) -> None:
        """The watcher follows the store (subscribed and caught up, or polled successfully)."""
        if self._was_lost and self.watch:
            _observe.event(self.name, "reconnect")
        self._was_lost = False
        self._live = self.push is not None and self.watch
        self._set_connected(True)

    def checked(self) -> None:
        """A check succeeded while notices cannot be had: confirmed, but not followed live."""
        self._set_connected(True)

    def lost(self, error: BaseException) -> None:
        """The watcher lost the store; it retries."""
        self._was_lost = True
        self._live = False
        self._set_connected(False, error)

    def _set_connected(self, connected: bool, error: BaseException | None = None) -> None:
        before = (self.connected, self.error, self._live)
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
        elif connected:
            self.error = None
        if connected != self.connected:
            self.connected = connected
            self.since = time.time()
        if (self.connected, self.error, self._live) != before or self.board.state is Health.INITIALIZING:
            self._evaluate()

    # -- the watcher's lifetime --------------------------------------------------------------------

    @property
    def watching(self) -> bool:
        """The watcher task runs."""
        return self._watcher.running

    def start_watcher(self) -> None:
        """Start the watcher task (its own asyncio task, so that open and close may be other tasks)."""
        self._watcher.start()

    async def stop_watcher(self) -> None:
        """Stop the watcher and wait for it."""
        self._live = False
        await self._watcher.stop()

    def abandon(self) -> None:
        """The dict was collected while open: stop the watcher and release the backend, unawaited."""
        self._watcher.abandon(self.backend)

    def watcher_ended(self) -> None:
        """The watcher task ended, for whatever reason."""
        self._live = False
        self._set_connected(False)

    def orphan(self) -> None:
        """The watcher was cancelled by somebody else: the event loop ends under an open dict."""
        self.orphaned = True
        self.mark_closed(OrphanedEntries.reason)
        self.cache.data.__class__ = OrphanedEntries
        warnings.warn(
            f"{self.name} was never closed: its event loop ended while it was open",
            ResourceWarning,
            stacklevel=1,
        )
