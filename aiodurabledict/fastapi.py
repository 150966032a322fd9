"""FastAPI integration: a dependency that hands handlers a fresh, read-only view of a dict.

Together with ``SyncMiddleware`` (or ``lifespan``) from ``aiodurabledict.asgi``, re-exported here::

    settings = open_dict("redis://localhost:6379/0?keyspace=settings")
    app = FastAPI(lifespan=lifespan(settings))
    app.add_middleware(SyncMiddleware, dicts=[settings], lifespan=False)

    @app.get("/")
    async def index(config: Annotated[Mapping[str, Any], Depends(settings_view(settings))]) -> str:
        return config.get("greeting", "hello")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

try:
    from fastapi import HTTPException
    from starlette.requests import HTTPConnection
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"aiodurabledict.fastapi needs FastAPI (missing module {_exc.name!r}): pip install 'aiodurabledict[fastapi]'",
        name=_exc.name,
    ) from _exc

from ._dict import AsyncDurableDict
from .asgi import (
    STALE_DETAIL,
    SYNCED_SCOPE_KEY,
    ChangeCallback,
    SyncMiddleware,
    follow_changes,
    lifespan,
    open_all,
    sync_within,
)

__all__ = ["ChangeCallback", "SyncMiddleware", "follow_changes", "lifespan", "open_all", "settings_view"]

V = TypeVar("V")


def settings_view(
    d: AsyncDurableDict[V], *, strict: bool = False, sync_timeout: float | None = 0.25
) -> Callable[[HTTPConnection], Awaitable[Mapping[str, V]]]:
    """A dependency giving the handler ``d``'s live, read-only view, synced for this request.

    The sync is skipped when ``SyncMiddleware`` already synced ``d`` for the request. Otherwise it
    costs nothing while ``d`` is followed live by a push watcher (``strict=False``, the default) and
    one round trip, shared by concurrent requests, in any other case or with ``strict=True``; never
    longer than ``sync_timeout`` seconds. With the store unreachable or slow the handler gets the
    last known values; past ``max_staleness`` the request fails with HTTP 503. Works in HTTP and
    WebSocket routes.
    """

    async def dependency(connection: HTTPConnection) -> Mapping[str, V]:
        if id(d) not in connection.scope.get(SYNCED_SCOPE_KEY, ()):
            stale = await sync_within((d,), strict=strict, timeout=sync_timeout)
            if stale is not None:
                raise HTTPException(
                    status_code=503, detail=STALE_DETAIL, headers={"Retry-After": "1"}
                ) from stale
        return d.view

    dependency.__name__ = f"settings_view_{id(d):x}"
    return dependency
