"""PostgreSQL (asyncpg through Tortoise's pool): a connection from the application's pool per call,
never inside an application transaction; every commit also NOTIFYs listeners.

PostgreSQL text cannot hold NUL: such a key raises ``InvalidKeyError`` and such a text value
``EncodeError``; nothing is escaped, so other readers of the table see exactly what the dict wrote.
"""

# ruff: noqa: S608 - identifiers come from model metadata and are quoted; values are always parameters.
from __future__ import annotations

import hashlib
import importlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from tortoise.exceptions import DBConnectionError, OperationalError

from ..._backend import Delta
from ...errors import BackendError, InvalidKeyError
from .columns import Columns, quote
from .dialect import Session
from .models import CHANGE_TABLE, ENTRY_TABLE, VERSION_TABLE
from .notices import payload, payload_tail
from .standard import StandardDialect, StandardStatements, library_ddl

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["PostgresDialect"]

# asyncpg ships no type information; it is there whenever a PostgreSQL client is.
asyncpg: Any = importlib.import_module("asyncpg")


class _PostgresSession:
    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        return list(await self.conn.fetch(sql, *args))

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        await self.conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(sql, list(rows))


class _PostgresStatements(StandardStatements):
    def __init__(self, cols: Columns) -> None:
        super().__init__(cols)
        t, k, v, ks = self.table, self.k, self.v, self.ks
        ver, chg = quote(VERSION_TABLE), quote(CHANGE_TABLE)
        self.notify = "SELECT pg_notify($1, $2)"
        # set() in one statement: the version row is locked first (the other parts read its new
        # version), the row and the log follow, and NOTIFY goes out at commit.
        n = 6 if ks else 4
        set_cte = (
            f'WITH v AS (UPDATE {ver} SET "version" = "version" + 1 WHERE "name" = $1 RETURNING "version"), '
            f"w AS (INSERT INTO {t} ({self.cols_in}) SELECT $2, $3{', $' + str(n) if ks else ''} FROM v "
            f"ON CONFLICT ({self.conflict}) DO UPDATE SET {v} = excluded.{v}), "
            f'l AS (INSERT INTO {chg} ("name", "version", "key") SELECT $1, "version", $2 FROM v) '
        )
        self.set_notify = set_cte + 'SELECT "version", pg_notify($4, \'{"v":\' || "version" || $5) FROM v'
        del k


class PostgresDialect(StandardDialect):
    """A dict in a PostgreSQL table."""

    kind = "postgres"
    errors = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        DBConnectionError,
        OperationalError,
    )

    def __init__(self, cols: Columns, name: str, keyspace: str | None, log_keep: int) -> None:
        super().__init__(cols, name, keyspace, log_keep)
        self._sql = _PostgresStatements(cols)
        self.channel = ""

    @property
    def sql(self) -> _PostgresStatements:
        return self._sql

    def location(self, client: BaseDBAsyncClient) -> str:
        pg: Any = client
        schema = self.cols.schema or pg.schema or ""
        return f"postgres:{pg.host}:{pg.port}/{pg.database}/{schema}"

    def check_key(self, key: str) -> None:
        if "\x00" in key:
            raise InvalidKeyError("PostgreSQL text cannot hold NUL characters; this key has one")

    def check_text(self, key: str, text: str) -> None:
        if "\x00" in text:
            from ...errors import EncodeError

            raise EncodeError(f"the value for key {key!r} holds NUL, which PostgreSQL text cannot store")

    @asynccontextmanager
    async def session(self, client: BaseDBAsyncClient, *, write: bool = False) -> AsyncIterator[Session]:
        async with client.acquire_connection() as conn:
            if write:
                async with conn.transaction():
                    yield _PostgresSession(conn)
            else:
                yield _PostgresSession(conn)

    async def prepare(self, client: BaseDBAsyncClient) -> None:
        identity = f"{self.location(client)}\0{self.name}"
        self.channel = "aiodurabledict_" + hashlib.sha256(identity.encode()).hexdigest()[:40]
        with_entry = self.cols.table == ENTRY_TABLE
        tables = [VERSION_TABLE, CHANGE_TABLE, *([ENTRY_TABLE] if with_entry else [])]
        async with self.session(client) as s:
            found = await s.fetch(
                "SELECT COUNT(to_regclass(t)) FROM unnest($1::text[]) AS t", [[quote(t) for t in tables]]
            )
        if int(found[0][0]) < len(tables):
            # Only when a table is missing: DDL takes table locks that would queue behind writers.
            async with self.session(client, write=True) as s:
                # Several processes may open their first dict at once: one creates, others wait.
                await s.execute("SELECT pg_advisory_xact_lock(hashtext('aiodurabledict ddl'))", ())
                for statement in library_ddl(
                    serial="BIGSERIAL NOT NULL PRIMARY KEY", blob="BYTEA", with_entry=with_entry
                ):
                    await s.execute(statement, ())
        async with self.session(client) as s:
            await s.execute(self.sql.ensure_version, [self.name])

    async def announce(self, s: Session, version: int, changes: Mapping[str, bytes | None]) -> None:
        await s.execute(self.sql.notify, [self.channel, payload(version, changes)])

    async def set(self, client: BaseDBAsyncClient, key: str, value: bytes) -> Delta:
        """Upsert one row in one statement: one round trip."""
        stored = self.stored(key, value)
        args = self.scope(self.name, key, stored, self.channel, payload_tail({key: value}))
        async with self.session(client) as s:
            rows = await s.fetch(self.sql.set_notify, args)
            if not rows:
                raise BackendError(f"the version row of dict {self.name!r} is missing")
            version = int(rows[0][0])
            if self.trim_due(version):
                # Its own transaction, after the write: trimming late is harmless.
                async with s.conn.transaction():  # type: ignore[attr-defined]
                    await self.trim(s, version)
        return Delta(version=version, changes={key: value}, prev=version - 1)
