"""Running dicts for an application's lifetime, with any framework (or none).

- ``open_all(*dicts)``: open every dict (all or none) for the duration of an ``async with``.
- ``lifespan(*dicts, followers=...)``: a ``lifespan=`` function for FastAPI and Starlette.
- ``follow_changes(d, callback)``: call ``callback`` with every change ``d`` applies, in the background.
- ``report_status(d)``: log each change of ``d``'s state (live, interrupted, stale...) at INFO.

(They were in ``aiodurabledict.asgi``; importing them from there still works.)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from ._changes import DEFAULT_BUFFER
from ._dict import AsyncDurableDict
from ._types import Change, Health, Status

__all__ = [
    "ChangeCallback",
    "close_each",
    "follow_changes",
    "lifespan",
    "open_all",
    "open_each",
    "report_status",
]

V = TypeVar("V")

ChangeCallback = Callable[[Change[V]], Awaitable[None] | None]
"""Called with each change; may be a plain function or a coroutine function."""

log: logging.Logger = logging.getLogger("aiodurabledict")


async def open_each(dicts: Iterable[AsyncDurableDict[Any]]) -> None:
    """Open every dict, or none: those already opened are closed again if one fails."""
    opened: list[AsyncDurableDict[Any]] = []
    try:
        for d in dicts:
            await d.open()
            opened.append(d)
    except BaseException:
        await close_each(opened)
        raise


async def close_each(dicts: Iterable[AsyncDurableDict[Any]]) -> None:
    """Close every dict, in reverse order; one failing to close does not keep the others open."""
    for d in reversed(tuple(dicts)):
        try:
            await d.aclose()
        except Exception:
            log.warning("closing %r failed", d, exc_info=True)


@asynccontextmanager
async def open_all(*dicts: AsyncDurableDict[Any]) -> AsyncIterator[None]:
    """Open every dict (all or none) for the duration of the ``async with``; close them after.

    When one cannot be opened, those opened already are closed again (and a closed dict stays
    closed: build new ones to try again).
    """
    await open_each(dicts)
    try:
        yield
    finally:
        await close_each(dicts)


@asynccontextmanager
async def follow_changes(
    d: AsyncDurableDict[V],
    callback: ChangeCallback[V],
    *,
    name: str | None = None,
    buffer: int = DEFAULT_BUFFER,
) -> AsyncIterator[asyncio.Task[None]]:
    """Call ``callback`` with every change ``d`` applies, in a background task, while in the block.

    Changes are those applied after entering (entered before ``d`` opens, the first load's entries
    arrive as changes from ``MISSING``). An exception from the callback is logged with its traceback
    and the key, never the value, and the next change is delivered as usual. A callback slower than
    the changes falls behind by at most ``buffer`` changes: it then receives one ``Change`` with
    ``lost`` set (see ``AsyncDurableDict.changes``). The task ends when the block exits or the dict
    closes.

    Usage::

        def apply_level(change: Change[str]) -> None:
            logging.getLogger(change.key).setLevel(change.new or logging.NOTSET)

        async with follow_changes(levels, apply_level):
            ...
    """
    label = name or str(getattr(callback, "__qualname__", repr(callback)))
    # Subscribing happens here, synchronously: nothing applied after this line is missed.
    stream = d.changes(buffer=buffer)
    task = asyncio.create_task(_deliver(stream, callback, label), name=f"aiodurabledict follower {label}")
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()


async def _deliver(stream: AsyncIterator[Change[V]], callback: ChangeCallback[V], label: str) -> None:
    async for change in stream:
        try:
            result = callback(change)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("change callback %s failed on key %r", label, change.key)


def lifespan(
    *dicts: AsyncDurableDict[Any],
    followers: Iterable[tuple[AsyncDurableDict[Any], ChangeCallback[Any]]] = (),
    log_status: bool = True,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A ``lifespan=`` function for FastAPI and Starlette: open ``dicts`` at startup, close at shutdown.

    ``followers`` pairs a dict with a callback run by ``follow_changes``; they start before the dicts
    open, so a callback also sees the entries of the first load. ``log_status``: each dict's changes
    of state are logged (``report_status``). Each worker process runs its own lifespan, so each
    opens its own dicts after the fork.

    Usage::

        app = FastAPI(lifespan=lifespan(settings, followers=[(levels, apply_level)]))
    """
    pairs = tuple(followers)

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for d, callback in pairs:
                await stack.enter_async_context(follow_changes(d, callback))
            if log_status:
                for d in dicts:
                    stack.callback(report_status(d))
            await stack.enter_async_context(open_all(*dicts))
            yield

    return run


def report_status(d: AsyncDurableDict[Any], logger: logging.Logger = log) -> Callable[[], None]:
    """Log every change of ``d``'s state (INFO when live, WARNING otherwise), with its cause; returns
    the function that stops it."""
    name = f"{type(d).__name__}({d.backend!r})"

    def report(status: Status) -> None:
        level = logging.INFO if status.state in (Health.LIVE, Health.CLOSED) else logging.WARNING
        cause = f" ({status.error})" if status.error and status.state is not Health.LIVE else ""
        logger.log(level, "%s is %s%s", name, status.state.value, cause)

    return d.on_status(report)
