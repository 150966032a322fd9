"""The background loop that keeps a dict's cache fresh: follow push notices or poll, with backoff.

With a push backend it subscribes, then checks the version at once (pub/sub drops whatever was sent
while nobody listened), applies notices as they come and re-checks every heartbeat, so that a frozen
server or a lost notice is noticed within one heartbeat. Without push it polls. It never raises:
failures are reported in the dict's status and retried with jittered, capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from ._backend import Delta

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Backoff", "first_error", "watch"]

log = logging.getLogger("aiodurabledict")


class _Followed(Protocol):
    """What the watcher needs of the dict."""

    async def _refresh(self, *, watcher: bool = ...) -> None: ...

    async def _catch_up(self) -> None: ...

    def _on_notice(self, delta: Delta) -> None: ...

    def _set_live(self, live: bool, error: BaseException | None = None) -> None: ...

    def _confirm(self) -> None: ...

    @property
    def _resync_needed(self) -> asyncio.Event: ...


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
    target: _Followed,
    subscribe: Callable[[], AbstractAsyncContextManager[AsyncIterator[Delta]]] | None,
    *,
    heartbeat: float,
    poll_interval: float,
    backoff: Backoff,
) -> None:
    """Run until cancelled. ``subscribe`` is the backend's push subscription, or ``None`` to poll."""
    while True:
        try:
            if subscribe is None:
                await _poll(target, poll_interval, backoff)
            else:
                await _follow(target, subscribe, heartbeat, backoff)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the watcher must never die; it reports and retries
            target._set_live(False, first_error(exc))
            delay = backoff.next()
            log.info("watcher lost the store (%s); retrying in %.2f s", _describe(exc), delay)
            await asyncio.sleep(delay)


async def _poll(target: _Followed, interval: float, backoff: Backoff) -> None:
    while True:
        await target._refresh(watcher=True)
        target._set_live(True)
        backoff.reset()
        await asyncio.sleep(interval)


async def _follow(
    target: _Followed,
    subscribe: Callable[[], AbstractAsyncContextManager[AsyncIterator[Delta]]],
    heartbeat: float,
    backoff: Backoff,
) -> None:
    async with subscribe() as notices:
        # Whatever was written while we were not subscribed was published to nobody: check now.
        await target._catch_up()
        target._set_live(True)
        backoff.reset()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_heartbeats(target, heartbeat))
            tasks.create_task(_resyncs(target))
            async for notice in notices:
                target._on_notice(notice)
            raise SubscriptionEndedError("the store ended the subscription")


async def _heartbeats(target: _Followed, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await target._refresh(watcher=True)


async def _resyncs(target: _Followed) -> None:
    while True:
        await target._resync_needed.wait()
        target._resync_needed.clear()
        await target._catch_up()


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group: what actually went wrong."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    leaf = first_error(exc)
    return f"{type(leaf).__name__}: {leaf}"
