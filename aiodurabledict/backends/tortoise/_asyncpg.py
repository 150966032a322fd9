"""Working around asyncpg: a query cut short (a timeout, a cancel) makes asyncpg send a cancel request
on a new connection, with no timeout, and the pool's release waits for it. Behind a stalled network
path that wait never ends, and the caller's timeout with it."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["connection"]


@asynccontextmanager
async def connection(client: BaseDBAsyncClient, *, transaction: bool) -> AsyncIterator[Any]:
    """A connection from the client's pool; with ``transaction``, inside BEGIN … COMMIT.

    When the work is cut short, or fails inside the transaction, the connection is dropped
    (``terminate()``: no round trip, the server rolls back) instead of being cancelled and reset:
    its release is then immediate, and the pool opens a new one when needed. A server's error outside a
    transaction leaves the connection as good as before, and it goes back to the pool.
    """
    postgres_error: type[BaseException] = importlib.import_module("asyncpg").PostgresError
    async with client.acquire_connection() as conn:
        try:
            if transaction:
                await conn.execute("BEGIN")
            yield conn
            if transaction:
                await conn.execute("COMMIT")
        except BaseException as exc:
            if transaction or not isinstance(exc, postgres_error):
                conn.terminate()
            raise
