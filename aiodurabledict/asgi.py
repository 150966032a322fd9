"""ASGI integration: fresh dicts on every request, opened and closed with the application.

- ``SyncMiddleware`` syncs the dicts at the start of each HTTP and WebSocket request (free while a
  watcher is live; one shared round trip for all concurrent requests without one). When the store
  is down, requests run on the last known values; past a dict's ``max_staleness`` they get a 503.
  It also opens the dicts at lifespan startup and closes them at shutdown, so that each worker
  process opens its own after the fork.
- ``open_all``, ``follow_changes`` and ``lifespan`` do the same for frameworks' ``lifespan=`` hooks.

Pure ASGI, no framework needed: it works under Starlette, FastAPI, Quart, Litestar or a bare app.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from ._changes import DEFAULT_BUFFER
from ._dict import AsyncDurableDict
from ._types import Change
from .errors import BackendError, StaleError

__all__ = ["ChangeCallback", "SyncMiddleware", "follow_changes", "lifespan", "open_all"]

V = TypeVar("V")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ChangeCallback = Callable[[Change[V]], Awaitable[None] | None]
"""Called with each change; may be a plain function or a coroutine function."""

log: logging.Logger = logging.getLogger("aiodurabledict")

# The scope key under which the middleware records which dicts it synced for this request, so that
# a dependency further in (``aiodurabledict.fastapi.settings_view``) does not sync them again.
SYNCED_SCOPE_KEY = "aiodurabledict.synced"

WEBSOCKET_TRY_AGAIN_LATER = 1013
STALE_DETAIL = "Settings are temporarily unavailable: their store has been unreachable for too long."
_STALE_BODY = json.dumps({"error": "stale", "detail": STALE_DETAIL}).encode()


class SyncMiddleware:
    """Sync ``dicts`` at the start of every HTTP and WebSocket request; open and close them with the app.

    - ``strict=False`` (default): a dict followed live by a push watcher is not checked (the cache
      trails the store by the propagation delay); any other dict (a polled store, no watcher, a gap
      being filled) is checked: the request sees every change committed before it began, for one
      round trip shared by the requests waiting on it.
    - ``strict=True``: every dict is checked for every request (read-after-commit per request).
    - Store unreachable: the request runs on the last known values (logged at debug level).
    - A dict's ``max_staleness`` passed: HTTP answers 503 with a JSON body; a WebSocket is refused
      with a 503 where the server supports ASGI's ``websocket.http.response``, else accepted and
      closed at once with code 1013 (try again later). The application is not called.
    - ``lifespan=True`` (default): open the dicts at startup (before the app's own startup runs, so
      it can use them) and close them after the app's shutdown. A dict that fails to open fails the
      startup. Needs a server that runs the lifespan protocol (uvicorn, hypercorn, granian do).

    Usage::

        app = SyncMiddleware(app, dicts=[settings, flags])      # any ASGI app
        app.add_middleware(SyncMiddleware, dicts=[settings])    # Starlette / FastAPI
    """

    def __init__(
        self,
        app: ASGIApp,
        dicts: Iterable[AsyncDurableDict[Any]],
        *,
        lifespan: bool = True,
        strict: bool = False,
    ) -> None:
        self.app = app
        self.dicts: tuple[AsyncDurableDict[Any], ...] = tuple(dicts)
        if not self.dicts:
            raise ValueError("SyncMiddleware needs at least one dict")
        self.lifespan = lifespan
        self.strict = strict
        self._ids = frozenset(map(id, self.dicts))
        self._stale_reported = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            stale = await self._sync()
            if stale is None:
                # Stacked middlewares add up: a dependency further in skips every dict synced here.
                scope[SYNCED_SCOPE_KEY] = scope.get(SYNCED_SCOPE_KEY, frozenset()) | self._ids
                await self.app(scope, receive, send)
            elif kind == "http":
                await _refuse_http(send)
            else:
                await _refuse_websocket(scope, receive, send)
        elif kind == "lifespan" and self.lifespan:
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _sync(self) -> StaleError | None:
        """Sync every dict; a ``StaleError``, or ``None`` to go on.

        Dicts that need no check are passed at once; those that need the store are checked together.
        """
        strict = self.strict
        waiting = [d for d in self.dicts if strict or not d.live]
        if not waiting:
            outcomes: list[StaleError | None] = []
        elif len(waiting) == 1:
            outcomes = [await sync_for_request(waiting[0], strict=strict)]
        else:
            outcomes = await asyncio.gather(*(sync_for_request(d, strict=strict) for d in waiting))
        stale = next((s for s in outcomes if s is not None), None)
        if stale is None:
            self._stale_reported = False
        elif not self._stale_reported:
            self._stale_reported = True
            log.warning("answering 503 until the store is back: %s", stale)
        return stale

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup = await receive()
        try:
            await _open_each(self.dicts)
        except Exception as exc:  # noqa: BLE001 - any failure to open fails the startup, with its reason
            await send({"type": "lifespan.startup.failed", "message": f"cannot open a dict: {exc}"})
            return

        replayed = answered = closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                await _close_each(self.dicts)

        async def app_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return startup
            return await receive()

        async def app_send(message: Message) -> None:
            nonlocal answered
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                answered = True
                if kind == "lifespan.startup.failed":
                    await close()
            elif kind.startswith("lifespan.shutdown."):
                # After the app's own shutdown, which may still use the dicts.
                await close()
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if answered:
                await close()
                raise
            # The app does not speak lifespan (it raised on the scope): speak it on its behalf.
            log.debug("the application does not handle lifespan; the middleware does", exc_info=True)
        except BaseException:
            await close()
            raise
        if not answered:
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await close()
                await send({"type": "lifespan.shutdown.complete"})
        await close()


async def sync_for_request(d: AsyncDurableDict[Any], *, strict: bool = False) -> StaleError | None:
    """Sync ``d`` for a request: ``None`` to go on (on cached values if the store is down), or the
    ``StaleError`` that must refuse it."""
    try:
        await d.sync(strict=strict)
    except StaleError as exc:
        return exc
    except BackendError as exc:
        log.debug("request runs on cached values: %s", exc)
    return None


async def _refuse_http(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_STALE_BODY)).encode()),
                (b"cache-control", b"no-store"),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _STALE_BODY})


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": _STALE_BODY})
        return
    # Closing before accepting would tell the client 403; accept so that 1013 reaches it.
    await send({"type": "websocket.accept"})
    await send(
        {"type": "websocket.close", "code": WEBSOCKET_TRY_AGAIN_LATER, "reason": "settings unavailable"}
    )


async def _open_each(dicts: Iterable[AsyncDurableDict[Any]]) -> None:
    """Open every dict, or none: those already opened are closed again if one fails."""
    opened: list[AsyncDurableDict[Any]] = []
    try:
        for d in dicts:
            await d.open()
            opened.append(d)
    except BaseException:
        await _close_each(opened)
        raise


async def _close_each(dicts: Iterable[AsyncDurableDict[Any]]) -> None:
    """Close every dict, in reverse order; one failing to close does not keep the others open."""
    for d in reversed(tuple(dicts)):
        try:
            await d.aclose()
        except Exception:
            log.warning("closing %r failed", d, exc_info=True)


@asynccontextmanager
async def open_all(*dicts: AsyncDurableDict[Any]) -> AsyncIterator[None]:
    """Open every dict (all or none) for the duration of the ``async with``; close them after."""
    await _open_each(dicts)
    try:
        yield
    finally:
        await _close_each(dicts)


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
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A ``lifespan=`` function for FastAPI and Starlette: open ``dicts`` at startup, close at shutdown.

    ``followers`` pairs a dict with a callback run by ``follow_changes``; they start before the dicts
    open, so a callback also sees the entries of the first load. Each worker process runs its own
    lifespan, so each opens its own dicts after the fork.

    Usage::

        app = FastAPI(lifespan=lifespan(settings, followers=[(levels, apply_level)]))
    """
    pairs = tuple(followers)

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for d, callback in pairs:
                await stack.enter_async_context(follow_changes(d, callback))
            await stack.enter_async_context(open_all(*dicts))
            yield

    return run
