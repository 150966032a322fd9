"""PostgreSQL (asyncpg through Tortoise's pool): a connection from the application's pool per call,
never inside an application transaction; every commit also NOTIFYs listeners with a signed notice.

PostgreSQL text cannot hold NUL: such a key raises ``InvalidKeyError`` and such a text value
``EncodeError``; nothing is escaped, so other readers of the table see exactly what the dict wrote.
"""

# ruff: noqa: S608 - identifiers come from model metadata and are quoted; values are always parameters.
from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from tortoise.exceptions import DBConnectionError, OperationalError

from ..._backend import Delta, new_token
from ...errors import EncodeError, InvalidKeyError
from ._asyncpg import connection
from .columns import Columns, quote
from .dialect import Dialect, Identity, Session
from .models import CHANGE_TABLE, ENTRY_TABLE, VERSION_TABLE
from .notices import pads, signed, tail
from .standard import NEW_COLUMNS, StandardStatements, library_ddl

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["PostgresDialect"]

# asyncpg ships no type information; it is there whenever a PostgreSQL client is.
asyncpg: Any = importlib.import_module("asyncpg")

#: The driver's failures: the server's errors, the connection's, asyncpg's own state.
ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    DBConnectionError,
    OperationalError,
)


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
    """The shared statements, plus PostgreSQL's own: ``notify``, and ``set`` in one statement."""

    def __init__(self, cols: Columns) -> None:
        super().__init__(cols)
        t, v, ks = self.table, self.v, self.ks
        ver, chg = quote(VERSION_TABLE), quote(CHANGE_TABLE)
        self.notify: str = "SELECT pg_notify($1, $2)"
        # set() in one statement. The version row is locked first and read as it was (the subquery
        # FOR UPDATE waits for, then sees, the latest commit); the row and the log follow; the notice
        # is signed in SQL (HMAC-SHA256 from the pads of the secret) and goes out at commit.
        # $1 name, $2 key, $3 value, $4 token, $5 the notice's tail, $6 channel, $7 outer pad,
        # $8 inner pad, $9 keyspace.
        self.set: str = (
            f'WITH v AS (UPDATE {ver} AS x SET "version" = o."version" + 1, "token" = $4 '
            f'FROM (SELECT "version", "token" FROM {ver} WHERE "name" = $1 FOR UPDATE) AS o '
            'WHERE x."name" = $1 RETURNING x."version", o."token" AS "prev"), '
            f"w AS (INSERT INTO {t} ({self.cols_in}) SELECT $2, $3{', $9' if ks else ''} FROM v "
            f"ON CONFLICT ({self.conflict}) DO UPDATE SET {v} = excluded.{v}), "
            f'l AS (INSERT INTO {chg} ("name", "version", "key", "token") SELECT $1, "version", $2, $4 FROM v), '
            'b AS (SELECT "version", "prev", \'{"v":\' || "version" || \',"t":"\' || $4 || \'","p":\' '
            "|| COALESCE('\"' || \"prev\" || '\"', 'null') || $5 AS body FROM v) "
            'SELECT "version", "prev", pg_notify($6, '
            "encode(sha256($7::bytea || sha256($8::bytea || convert_to(body, 'UTF8'))), 'hex') || body) FROM b"
        )


class PostgresDialect(Dialect):
    """A dict in a PostgreSQL table. ``channel`` and ``secret`` come from the version row at ``prepare``."""

    kind = "postgres"
    pushes = True
    errors: ClassVar[tuple[type[BaseException], ...]] = ERRORS

    def __init__(self, cols: Columns, name: str, keyspace: str | None, log_keep: int) -> None:
        super().__init__(cols, name, keyspace, log_keep)
        self._sql = _PostgresStatements(cols)
        self.channel: str = ""
        self.secret: bytes = b""
        self._pads = (b"", b"")

    @property
    def sql(self) -> _PostgresStatements:
        """The statements, with PostgreSQL's one-statement ``set``."""
        return self._sql

    def check_key(self, key: str) -> None:
        """Refuse a key holding NUL, which PostgreSQL text cannot store."""
        if "\x00" in key:
            raise InvalidKeyError("PostgreSQL text cannot hold NUL characters; this key has one")

    def check_text(self, key: str, text: str) -> None:
        """Refuse a text value holding NUL, which PostgreSQL text cannot store."""
        if "\x00" in text:
            raise EncodeError(f"the value for key {key!r} holds NUL, which PostgreSQL text cannot store")

    @asynccontextmanager
    async def session(self, client: BaseDBAsyncClient, *, write: bool = False) -> AsyncIterator[Session]:
        """A connection from the client's pool (never an application transaction's); with ``write``,
        inside a transaction of its own."""
        async with connection(client, transaction=write) as conn:
            yield _PostgresSession(conn)

    async def create(self, client: BaseDBAsyncClient) -> None:
        """Create the library's missing tables and columns; one query when nothing is missing."""
        with_entry = self.cols.table == ENTRY_TABLE
        tables = [VERSION_TABLE, CHANGE_TABLE, *([ENTRY_TABLE] if with_entry else [])]
        wanted = [(quote(table), column) for table, columns in NEW_COLUMNS.items() for column in columns]
        # Tables, then the columns an older release lacked (a missing table lacks them all).
        check = (
            "SELECT (SELECT COUNT(to_regclass(t)) FROM unnest($1::text[]) AS t), "
            "(SELECT COUNT(*) FROM unnest($2::text[], $3::text[]) AS w(t, c) JOIN pg_attribute a "
            "ON a.attrelid = to_regclass(w.t) AND a.attname = w.c AND NOT a.attisdropped)"
        )
        args = [[quote(t) for t in tables], [t for t, _ in wanted], [c for _, c in wanted]]
        async with self.session(client) as s:
            found = await s.fetch(check, args)
        if int(found[0][0]) == len(tables) and int(found[0][1]) == len(wanted):
            return
        # Only when something is missing: DDL takes table locks that would queue behind writers.
        async with self.session(client, write=True) as s:
            # Several processes may open their first dict at once: one changes the tables, others wait.
            await s.execute("SELECT pg_advisory_xact_lock(hashtext('aiodurabledict ddl'))", ())
            for statement in library_ddl(
                serial="BIGSERIAL NOT NULL PRIMARY KEY", blob="BYTEA", with_entry=with_entry
            ):
                await s.execute(statement, ())
            for table, columns in NEW_COLUMNS.items():
                for column, kind in columns.items():
                    await s.execute(f'ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS "{column}" {kind}', ())

    async def prepare(self, client: BaseDBAsyncClient) -> Identity:
        """The tables, the version row and the identity (``Dialect.prepare``); from the identity, the
        NOTIFY channel and the secret that signs notices."""
        identity = await super().prepare(client)
        self.channel = "aiodurabledict_" + identity.store
        self.secret = identity.secret
        self._pads = pads(identity.secret)
        return identity

    async def announce(self, s: Session, delta: Delta) -> None:
        """NOTIFY the commit ``delta``, signed; it goes out when the transaction commits."""
        await s.execute(self.sql.notify, [self.channel, signed(self.secret, delta)])

    async def set(self, client: BaseDBAsyncClient, key: str, value: bytes) -> Delta:
        """Upsert one row in one statement: one round trip."""
        stored = self.stored(key, value)
        token = new_token()
        outer, inner = self._pads
        args = [self.name, key, stored, token, tail({key: value}), self.channel, outer, inner]
        async with self.session(client) as s:
            rows = await s.fetch(self.sql.set, self.scope(*args))
        if not rows:
            raise self.missing()
        version = int(rows[0][0])
        if self.trim_due(version):
            # Its own transaction, after the write: trimming late is harmless.
            async with self.session(client, write=True) as s:
                await self.trim(s, version)
        return Delta(version, {key: value}, prev=version - 1, token=token, prev_token=rows[0][1])
