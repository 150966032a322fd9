"""What the Tortoise store's own tests share: a database per test on each dialect, an application's
Tortoise context, a counter of the statements a client sends, and direct reads of the tables."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tortoise.context import TortoiseContext

from aiodurabledict import AsyncDurableDict, Delta
from aiodurabledict.backends.tortoise import TortoiseBackend
from tests.stores.tortoise import (
    generate_schemas,
    mysql_database,
    postgres_schema,
    schema_url,
    tortoise_config,
)

__all__ = [
    "DIALECTS",
    "ONE_CONNECTION",
    "Counter",
    "app_context",
    "backend_of",
    "database",
    "entries",
    "execute",
    "notices_of",
    "pooled",
    "table_content",
]

ONE_CONNECTION = "minsize=1&maxsize=1"


def pooled(db_url: str) -> str:
    """``db_url`` with the client's usual pool instead of one connection."""
    return db_url.replace("&" + ONE_CONNECTION, "").replace("?" + ONE_CONNECTION, "")


@asynccontextmanager
async def database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A Tortoise URL: a SQLite file, or a fresh PostgreSQL schema or MySQL database whose pool has
    one connection."""
    if kind == "sqlite":
        yield f"sqlite://{tmp_path / 'db.sqlite'}"
    elif kind == "mysql":
        async with mysql_database() as url:
            yield f"{url}?{ONE_CONNECTION}"
    else:
        async with postgres_schema() as schema:
            yield f"{schema_url(schema)}&{ONE_CONNECTION}"


#: The params of a ``db_url`` fixture: each test on SQLite, PostgreSQL and MySQL.
DIALECTS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@asynccontextmanager
async def app_context(db_url: str, *modules: str) -> AsyncIterator[TortoiseContext]:
    """An application's Tortoise context, initialised and current, as the application would have it."""
    ctx = TortoiseContext()
    async with ctx:
        await ctx.init(config=tortoise_config(db_url, *modules))
        await generate_schemas(ctx)
        yield ctx


def backend_of(d: AsyncDurableDict[Any]) -> TortoiseBackend:
    """The Tortoise backend under ``d`` (through a test wrapper, if any)."""
    backend: Any = d.backend
    backend = getattr(backend, "inner", backend)
    assert isinstance(backend, TortoiseBackend)
    return backend


def notices_of(d: AsyncDurableDict[Any]) -> list[Delta]:
    """What the ``spied`` backend of ``d`` has heard so far."""
    backend: Any = d.backend
    notices: list[Delta] = backend.notices
    return notices


def _placeholders(kind: str, sql: str) -> str:
    """``sql`` as the dialect's session of ``kind`` takes it (MySQL's maps ``$n`` itself)."""
    if kind == "sqlite":
        return sql.replace("$", "?")
    if kind == "mysql":
        return sql.replace('"', "`")
    return sql


async def table_content(d: AsyncDurableDict[Any], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (``$n`` parameters, double-quoted names) read directly on ``d``'s connection."""
    backend = backend_of(d)
    async with backend.dialect.session(backend.client()) as s:
        return [tuple(row) for row in await s.fetch(_placeholders(backend.kind, sql), list(args))]


async def execute(d: AsyncDurableDict[Any], *statements: tuple[str, list[Any]]) -> None:
    """Run ``(sql, args)`` statements directly on ``d``'s connection, in one transaction."""
    backend = backend_of(d)
    async with backend.dialect.session(backend.client(), write=True) as s:
        for sql, args in statements:
            await s.execute(_placeholders(backend.kind, sql), args)


async def entries(d: AsyncDurableDict[Any]) -> dict[str, Any]:
    """The dict's content as its table holds it, read directly (values decoded as JSON)."""
    backend = backend_of(d)
    cols = backend.dialect.cols
    where = f' WHERE "{cols.keyspace}" = $1' if cols.keyspace else ""
    args = [backend.dialect.keyspace] if cols.keyspace else []
    rows = await table_content(d, f'SELECT "{cols.key}", "{cols.value}" FROM "{cols.table}"{where}', *args)
    return {key: json.loads(cols.out(value)) for key, value in rows if value is not None}


class Counter:
    """Counts the SQL statements the database receives from one Tortoise client."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)

    async def attach(self, client: Any) -> None:
        """Hook the driver itself: every statement sent, whoever sends it, is counted."""
        if client.capabilities.dialect == "sqlite":
            async with client.acquire_connection() as conn:
                await conn.set_trace_callback(self.statements.append)
        elif client.capabilities.dialect == "mysql":
            # asyncmy's connection is a compiled class: wrap what the client hands out instead.
            acquire = client.acquire_connection
            statements = self.statements

            @asynccontextmanager
            async def counted() -> AsyncIterator[Any]:
                async with acquire() as conn:
                    yield _CountedConnection(conn, statements)

            client.acquire_connection = counted
        else:
            # The client's pool has one connection (maxsize=1): log every query it runs, except the
            # reset asyncpg's pool sends when a connection comes back (the pool's, not the dict's).
            def log(record: Any) -> None:
                if not record.query.startswith("SELECT pg_advisory_unlock_all()"):
                    self.statements.append(record.query)

            async with client.acquire_connection() as conn:
                conn.add_query_logger(log)


class _CountedCursor:
    def __init__(self, cursor: Any, statements: list[str]) -> None:
        self._cursor = cursor
        self._statements = statements

    async def execute(self, query: str, args: Any = None) -> Any:
        self._statements.append(query)
        return await self._cursor.execute(query, args)

    async def executemany(self, query: str, args: Any) -> Any:
        self._statements.append(query)
        return await self._cursor.executemany(query, args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class _CountedConnection:
    """A MySQL connection that logs each statement (and BEGIN, COMMIT, ROLLBACK) it sends."""

    def __init__(self, conn: Any, statements: list[str]) -> None:
        self._conn = conn
        self._statements = statements

    def cursor(self) -> _CountedCursor:
        return _CountedCursor(self._conn.cursor(), self._statements)

    async def begin(self) -> None:
        self._statements.append("BEGIN")
        await self._conn.begin()

    async def commit(self) -> None:
        self._statements.append("COMMIT")
        await self._conn.commit()

    async def rollback(self) -> None:
        self._statements.append("ROLLBACK")
        await self._conn.rollback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
