"""PostgreSQL LISTEN: a connection of its own, opened with the application client's settings, rather
than one held out of the application's pool: the pool keeps its size for queries, and a listening
connection is never reset nor handed to another task."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ...errors import BackendError, map_exceptions

__all__ = ["listen"]

# Pool options of asyncpg that its connect() refuses; the LISTEN connection is not pooled.
_POOL_ONLY = frozenset(
    {"min_size", "max_size", "max_queries", "max_inactive_connection_lifetime", "setup", "init"}
)
# Seconds of quiet after which the connection is checked, and how long the check may take.
_QUIET = 5.0
_PING = 2.0


@asynccontextmanager
async def listen(client: Any, channel: str) -> AsyncIterator[AsyncIterator[str]]:
    """LISTEN on ``channel``; iterate to receive the payloads until the connection breaks."""
    # asyncpg ships no type information; it is there whenever a PostgreSQL client is.
    asyncpg: Any = importlib.import_module("asyncpg")
    errors = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    )
    extra = {k: v for k, v in client.extra.items() if k not in _POOL_ONLY}
    settings = dict(client.server_settings)
    if client.schema:
        settings["search_path"] = client.schema
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    with map_exceptions(*errors, message="cannot listen for changes"):
        async with asyncio.timeout(10):
            conn = await asyncpg.connect(
                host=client.host,
                port=client.port,
                user=client.user,
                password=client.password,
                database=client.database,
                server_settings=settings,
                **extra,
            )
    try:
        conn.add_termination_listener(lambda _conn: queue.put_nowait(None))
        with map_exceptions(*errors, message="cannot listen for changes"):
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload: queue.put_nowait(payload))
        yield _payloads(conn, queue, errors)
    finally:
        try:
            async with asyncio.timeout(2):
                await conn.close()
        except BaseException:
            conn.terminate()
            raise


async def _payloads(
    conn: Any, queue: asyncio.Queue[str | None], errors: tuple[type[BaseException], ...]
) -> AsyncIterator[str]:
    while True:
        try:
            async with asyncio.timeout(_QUIET):
                payload = await queue.get()
        except TimeoutError:
            # Quiet for a while: make sure the connection is still there to hear anything.
            with map_exceptions(*errors, message="the LISTEN connection stopped answering"):
                async with asyncio.timeout(_PING):
                    await conn.fetchval("SELECT 1")
            continue
        if payload is None:
            raise BackendError("the LISTEN connection closed")
        yield payload
