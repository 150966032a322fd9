"""The background loop that keeps a cache fresh: follow push notices or poll, with backoff.

With a push backend it subscribes, then checks at once (pub/sub drops whatever was sent while nobody
listened), hands notices to the syncer as they come and checks every heartbeat, so that a frozen
server or a lost notice is noticed within one heartbeat. Without push it polls. It never raises:
failures are reported to the syncer and retried with jittered, capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Protocol

import anyio

if TYPE_CHECKING:
    from ._backend import Backend, Delta, PushBackend


class Syncer(Protocol):
    """What the watcher asks of the syncer it keeps fresh (``_sync.Syncer``)."""

    name: str
    push: PushBackend | None
    heartbeat: float
    check_interval: float
    poll_interval: float
    resync: asyncio.Event

    async def check(self, *, watcher: bool = ...) -> None: ...

    async def ensure_started(self, timeout: float | None = ...) -> None: ...

    def on_notice(self, delta: Delta) -> None: ...

    def went_live(self) -> None: ...

    def checked(self) -> None: ...

    def lost(self, error: BaseException) -> None: ...

    def orphan(self) -> None: ...

    def watcher_ended(self) -> None: ...

__all__ = ["Backoff", "SubscriptionEndedError", "Syncer", "WatcherTask", "describe", "first_error", "watch"]

log = logging.getLogger("aiodurabledict")


class Backoff:
    """Full-jitter exponential backoff: a random delay up to ``base * 2**n``, capped."""

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = random.uniform(self.base / 2, min(self.cap, self.base * 2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def reset(self) -> None:
        self.attempt = 0


class SubscriptionEndedError(Exception):
    """The store closed the subscription; the watcher subscribes again."""


async def watch(
    syncer: Syncer,
    push: PushBackend | None,
    *,
    heartbeat: float,
    poll_interval: float,
    backoff: Backoff,
) -> None:
    """Run until cancelled: follow ``push`` (the backend, when it pushes) or poll."""
    while True:
        try:
            await syncer.ensure_started()
            if push is None:
                await _poll(syncer, poll_interval, backoff)
            else:
                await _follow(syncer, push, heartbeat, backoff)
        except Exception as exc:  # noqa: BLE001 - the watcher must never die; it reports and retries
            syncer.lost(first_error(exc))
            delay = backoff.next()
            log.debug(
                "%s: the watcher lost the store (%s); again in %.2f s", syncer.name, describe(exc), delay
            )
            if push is not None:
                await _check_meanwhile(syncer)
            await anyio.sleep(delay)


async def _check_meanwhile(syncer: Syncer) -> None:
    """While notices cannot be had (a subscription refused after a failover), check through the
    store's ordinary path, so that the cache converges and its staleness stays bounded."""
    try:
        await syncer.check(watcher=True)
    except Exception as exc:  # noqa: BLE001 - a failed check is the outage already reported
        log.debug("%s: check without notices failed: %s", syncer.name, describe(exc))
    else:
        syncer.checked()


async def _poll(syncer: Syncer, interval: float, backoff: Backoff) -> None:
    while True:
        await syncer.check(watcher=True)
        syncer.went_live()
        backoff.reset()
        await anyio.sleep(interval)


async def _follow(syncer: Syncer, push: PushBackend, heartbeat: float, backoff: Backoff) -> None:
    async with push.subscribe() as notices:
        # Whatever was written while we were not subscribed was published to nobody: check now.
        await syncer.check(watcher=True)
        syncer.went_live()
        backoff.reset()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_heartbeats, syncer, heartbeat)
            tasks.start_soon(_resyncs, syncer)
            async for notice in notices:
                syncer.on_notice(notice)
            raise SubscriptionEndedError("the store ended the subscription")


async def _heartbeats(syncer: Syncer, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        await syncer.check(watcher=True)


async def _resyncs(syncer: Syncer) -> None:
    while True:
        await syncer.resync.wait()
        syncer.resync.clear()
        await syncer.check(watcher=True)


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group: what actually went wrong."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException | None) -> str:
    """``Type: message`` of what actually went wrong (never a value)."""
    leaf = first_error(exc) if exc is not None else None
    return "nothing" if leaf is None else f"{type(leaf).__name__}: {leaf}"


class WatcherTask:
    """The watcher's own asyncio task (so that ``open()`` and ``aclose()`` may run in other tasks),
    stopped through an anyio cancel scope: it cancels again at every await, so a client library that
    swallows a cancellation cannot keep the watcher running. Holds the syncer, never the dict."""

    def __init__(self, syncer: Syncer) -> None:
        self._syncer = syncer
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        """The task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start following the store."""
        syncer = self._syncer
        self._stopping = False
        backoff = Backoff(cap=max(1.0, min(5.0, syncer.heartbeat * 2)))
        self._task = asyncio.get_running_loop().create_task(
            self._run(backoff), name=f"aiodurabledict watcher {syncer.name}"
        )

    async def _run(self, backoff: Backoff) -> None:
        syncer = self._syncer
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                await watch(
                    syncer,
                    syncer.push,
                    heartbeat=syncer.check_interval,
                    poll_interval=syncer.poll_interval,
                    backoff=backoff,
                )
        except asyncio.CancelledError:
            if not self._stopping:
                # Cancelled by somebody else: the event loop is shutting down under an open dict.
                syncer.orphan()
            raise
        finally:
            syncer.watcher_ended()

    async def stop(self) -> None:
        """Stop the task and wait for it (10 s at most; it is then left behind, with a warning)."""
        task, self._task = self._task, None
        self._stopping = True
        if task is None:
            return
        if self._scope is not None:
            self._scope.cancel()
        else:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10.0)
        if not done:
            log.warning("%s: the watcher did not stop within 10 s; leaving it behind", self._syncer.name)
        elif not task.cancelled() and task.exception() is not None:
            log.debug("%s: the watcher ended with %s", self._syncer.name, describe(task.exception()))

    def abandon(self, backend: Backend) -> None:
        """Stop the task and release ``backend``, without waiting (from a finaliser, any thread)."""
        task = self._task
        if task is None or task.done():
            return
        loop = task.get_loop()
        if loop.is_closed():
            return
        self._stopping = True
        scope, name = self._scope, self._syncer.name

        def stop() -> None:
            if scope is not None:
                scope.cancel()
            else:
                task.cancel()
            closing = loop.create_task(_release(backend), name=f"aiodurabledict release {name}")
            _releasing.add(closing)
            closing.add_done_callback(_releasing.discard)

        loop.call_soon_threadsafe(stop)


_releasing: set[asyncio.Task[None]] = set()


async def _release(backend: Backend) -> None:
    try:
        async with asyncio.timeout(10.0):
            await backend.aclose()
    except Exception as exc:  # noqa: BLE001 - releasing an abandoned dict is best effort
        log.debug("releasing an abandoned dict failed: %s", describe(exc))
