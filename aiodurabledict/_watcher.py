"""The background loop that keeps a cache fresh: follow push notices or poll, with backoff.

With a push backend it subscribes, then checks at once (pub/sub drops whatever was sent while nobody
listened), hands notices to the syncer as they come and checks every heartbeat, so that a frozen
server or a lost notice is noticed within one heartbeat. Without push it polls. It never raises:
failures are reported to the syncer and retried with jittered, capped backoff.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from ._backend import PushBackend
    from ._sync import Syncer

__all__ = ["Backoff", "SubscriptionEndedError", "describe", "first_error", "watch"]

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
