"""ASGI integration: fresh dicts on every request, opened and closed with the application.

``SyncMiddleware`` syncs the dicts at the start of each HTTP and WebSocket request (free while a push
watcher is live; one shared round trip for all concurrent requests otherwise), never for longer than
``sync_timeout``. When the store is down, requests run on the last known values; past a dict's
``max_staleness`` they get a 503. It also opens the dicts at lifespan startup and closes them at
shutdown, so that each worker process opens its own after the fork.

Pure ASGI, no framework needed: it works under Starlette, FastAPI, Quart, Litestar or a bare app.
(``open_all``, ``follow_changes`` and ``lifespan`` live in ``aiodurabledict.lifespan``; they are
importable from here too.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._dict import AsyncDurableDict
from ._types import Health
from .errors import BackendError, StaleError
from .lifespan import ChangeCallback, close_each, follow_changes, lifespan, open_all, open_each

__all__ = [
    "ChangeCallback",
    "SyncMiddleware",
    "follow_changes",
    "lifespan",
    "open_all",
    "sync_for_request",
    "sync_within",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

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
    - ``sync_timeout`` (seconds, default 0.25): a request never waits longer for its checks. When
      they have not answered by then (a frozen store), it runs on the cached values, or gets the
      503 below if a dict is past its ``max_staleness``; the checks go on in the background.
    - Store unreachable: the request runs on the last known values (logged at debug level).
    - A dict's ``max_staleness`` passed: HTTP answers 503 with a JSON body (or ``stale_response``,
      an ASGI app of your own); a WebSocket is refused with a 503 where the server supports ASGI's
      ``websocket.http.response``, else accepted and closed at once with code 1013 (try again
      later). The application is not called.
    - ``exclude_paths``: requests to these paths (or below them: ``/health`` covers
      ``/health/live``) are passed through without a check and never refused (health checks,
      metrics, docs).
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
        sync_timeout: float | None = 0.25,
        exclude_paths: Iterable[str] = (),
        stale_response: ASGIApp | None = None,
    ) -> None:
        self.app = app
        self.dicts: tuple[AsyncDurableDict[Any], ...] = tuple(dicts)
        if not self.dicts:
            raise ValueError("SyncMiddleware needs at least one dict")
        if sync_timeout is not None and not sync_timeout > 0:
            raise ValueError(f"sync_timeout must be positive or None, not {sync_timeout!r}")
        self.lifespan = lifespan
        self.strict = strict
        self.sync_timeout = sync_timeout
        self.exclude_paths: tuple[str, ...] = tuple(p.rstrip("/") or "/" for p in exclude_paths)
        self.stale_response = stale_response
        self._ids = frozenset(map(id, self.dicts))
        self._stale_reported = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind == "http" or kind == "websocket") and not self._excluded(scope.get("path", "")):
            stale = await self._sync()
            if stale is None:
                # Stacked middlewares add up: a dependency further in skips every dict synced here.
                scope[SYNCED_SCOPE_KEY] = scope.get(SYNCED_SCOPE_KEY, frozenset()) | self._ids
                await self.app(scope, receive, send)
            elif kind == "http":
                await (self.stale_response or _refuse_http)(scope, receive, send)
            else:
                await _refuse_websocket(scope, receive, send)
        elif kind == "lifespan" and self.lifespan:
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _excluded(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") or p == "/" for p in self.exclude_paths)

    async def _sync(self) -> StaleError | None:
        """Sync every dict; a ``StaleError``, or ``None`` to go on.

        Dicts that need no check are passed at once; those that need the store are checked together,
        for ``sync_timeout`` at most.
        """
        stale = await sync_within(self.dicts, strict=self.strict, timeout=self.sync_timeout)
        if stale is None:
            self._stale_reported = False
        elif not self._stale_reported:
            self._stale_reported = True
            log.warning("answering 503 until the store is back: %s", stale)
        return stale

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup = await receive()
        try:
            await open_each(self.dicts)
        except Exception as exc:  # noqa: BLE001 - any failure to open fails the startup, with its reason
            await send({"type": "lifespan.startup.failed", "message": f"cannot open a dict: {exc}"})
            return

        replayed = answered = closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                await close_each(self.dicts)

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


# Checks that requests stopped waiting for, kept until they end (so that they are not collected),
# and by dict (its id: the check holds the dict, so the id stays its own) the first of them still
# unanswered: the store is slow for that dict until it ends.
_behind: set[asyncio.Future[StaleError | None]] = set()
_unanswered: dict[int, asyncio.Future[StaleError | None]] = {}


async def sync_within(
    dicts: Iterable[AsyncDurableDict[Any]], *, strict: bool = False, timeout: float | None = 0.25
) -> StaleError | None:
    """Sync ``dicts`` for a request, waiting ``timeout`` seconds at most: ``None`` to go on (on
    cached values if the store is slow or down), or the ``StaleError`` that must refuse it.

    Dicts that need no check (live, unless ``strict``) pass at once; the others are checked
    together. A check that has not answered in time goes on in the background, and until it ends
    the store is known to be slow for that dict: later requests neither wait for it nor pile more
    checks on it, and go on at once as the dict's staleness says.
    """
    waiting = [d for d in dicts if strict or not d.live]
    if not waiting:
        return None
    if timeout is None:
        outcomes = await asyncio.gather(*(sync_for_request(d, strict=strict) for d in waiting))
        return next((s for s in outcomes if s is not None), None)
    slow = [d for d in waiting if id(d) in _unanswered]
    checks = [
        (d, asyncio.ensure_future(sync_for_request(d, strict=strict)))
        for d in waiting
        if id(d) not in _unanswered
    ]
    if checks:
        await asyncio.wait([check for _, check in checks], timeout=timeout)
    outcomes = [_stale_now(d) for d in slow]
    for d, check in checks:
        if check.done():
            outcomes.append(check.result())
            continue
        # Not answered in time: the request goes on as the dict's staleness says.
        _behind.add(check)
        check.add_done_callback(_ended)
        if id(d) not in _unanswered:
            _unanswered[id(d)] = check
            check.add_done_callback(functools.partial(_answered, id(d)))
        outcomes.append(_stale_now(d))
    return next((s for s in outcomes if s is not None), None)


def _ended(check: asyncio.Future[StaleError | None]) -> None:
    _behind.discard(check)
    if not check.cancelled() and (exc := check.exception()) is not None:
        log.debug("a check no request waited for failed: %r", exc)


def _answered(key: int, check: asyncio.Future[StaleError | None]) -> None:
    if _unanswered.get(key) is check:
        del _unanswered[key]


def _stale_now(d: AsyncDurableDict[Any]) -> StaleError | None:
    """The ``StaleError`` a request must get from ``d`` now, without waiting for the store."""
    status = d.status
    if status.state is Health.STALE:
        return StaleError(f"the cache has gone unconfirmed past max_staleness: {status.error}")
    return None


async def _refuse_http(_scope: Scope, _receive: Receive, send: Send) -> None:
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
