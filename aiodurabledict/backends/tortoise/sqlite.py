"""SQLite (aiosqlite): the application's one connection, writes under ``BEGIN IMMEDIATE``.

The dict shares the connection of the application's Tortoise client (and its lock): do not write
through a dict inside an open transaction of your own. ``BEGIN IMMEDIATE`` takes the write lock at once
(waiting up to the connection's busy timeout, 5 s by default), never halfway through a write.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from tortoise.exceptions import DBConnectionError, OperationalError

from ._aiosqlite import fork_gate, queue_rollback
from .columns import Columns
from .dialect import Dialect, Session
from .models import CHANGE_TABLE, ENTRY_TABLE, VERSION_TABLE
from .standard import NEW_COLUMNS, StandardStatements, library_ddl

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["SqliteDialect"]


class _SqliteSession:
    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        return list(await self.conn.execute_fetchall(sql, tuple(args)))

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        cursor = await self.conn.execute(sql, tuple(args))
        await cursor.close()

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        cursor = await self.conn.executemany(sql, [tuple(r) for r in rows])
        await cursor.close()


class _SqliteStatements(StandardStatements):
    """The shared statements with SQLite's ``?n`` parameters; ``BEGIN IMMEDIATE`` is the lock."""

    def __init__(self, cols: Columns) -> None:
        super().__init__(cols)
        self.lock: str = self.lock.removesuffix(" FOR UPDATE")
        for name, sql in vars(self).items():
            if isinstance(sql, str):
                setattr(self, name, re.sub(r"\$(\d+)", r"?\1", sql))


class SqliteDialect(Dialect):
    """A dict in a SQLite file."""

    kind = "sqlite"
    one_connection = True
    errors: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.Error, DBConnectionError, OperationalError)

    def __init__(self, cols: Columns, name: str, keyspace: str | None, log_keep: int) -> None:
        super().__init__(cols, name, keyspace, log_keep)
        self._sql = _SqliteStatements(cols)

    @property
    def sql(self) -> _SqliteStatements:
        """The statements, with SQLite's parameters."""
        return self._sql

    @asynccontextmanager
    async def session(self, client: BaseDBAsyncClient, *, write: bool = False) -> AsyncIterator[Session]:
        """The application's one connection; with ``write``, inside ``BEGIN IMMEDIATE`` (the database's
        write lock, taken at once), committed when the block ends and rolled back when it fails.
        No fork happens while it is open (see ``ForkGate``)."""
        async with fork_gate.passage(), client.acquire_connection() as conn:
            session = _SqliteSession(conn)
            if not write:
                yield session
                return
            try:
                await session.execute("BEGIN IMMEDIATE", ())
                yield session
                await session.execute("COMMIT", ())
            except BaseException:
                await queue_rollback(session)
                raise

    def closing(self) -> AbstractAsyncContextManager[None]:
        """Closing the connection runs SQLite in aiosqlite's thread: no fork meanwhile."""
        return fork_gate.passage()

    async def create(self, client: BaseDBAsyncClient) -> None:
        """Create the library's missing tables and columns, under the write lock (only when something
        is missing)."""
        with_entry = self.cols.table == ENTRY_TABLE
        tables = [VERSION_TABLE, CHANGE_TABLE, *([ENTRY_TABLE] if with_entry else [])]
        marks = ", ".join("?" for _ in tables)
        async with self.session(client) as s:
            found = await s.fetch(
                f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",  # noqa: S608
                tables,
            )
            missing = int(found[0][0]) < len(tables) or bool(await _missing_columns(s))
        if missing:
            # Only when something is missing: DDL would queue behind writers for nothing. Under the
            # write lock, so that of several processes opening at once one changes the tables.
            async with self.session(client, write=True) as s:
                for statement in library_ddl(
                    serial="INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL", blob="BLOB", with_entry=with_entry
                ):
                    await s.execute(statement, ())
                for table, column, kind in await _missing_columns(s):
                    await s.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {kind}', ())


async def _missing_columns(s: Session) -> list[tuple[str, str, str]]:
    """The columns the tables of an older release lack."""
    missing = []
    for table, columns in NEW_COLUMNS.items():
        have = {row[1] for row in await s.fetch(f'PRAGMA table_info("{table}")', ())}
        missing += [(table, column, kind) for column, kind in columns.items() if column not in have]
    return missing
