"""MySQL and MariaDB (InnoDB, asyncmy or aiomysql through Tortoise's pool).

Reads are single autocommit statements (each sees every earlier commit); writes run READ COMMITTED,
after locking the dict's version row ``FOR UPDATE``. Keys are compared exactly, so the key and keyspace columns, and the
version table's name, need a binary collation (``utf8mb4_bin``): a case-insensitive one, the default
of tables Tortoise generates, would merge ``"a"`` and ``"A"``, and the dict refuses it at open (the
error names the ``ALTER TABLE`` to run). The library's own tables are created with it. Under a PAD
SPACE collation (``utf8mb4_bin``) a key ending in a space would equal the one without: such a key
raises ``InvalidKeyError``.
"""

# ruff: noqa: S608 - identifiers come from model metadata and are quoted; values are always parameters.
from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from tortoise.exceptions import DBConnectionError, OperationalError

from ...errors import BackendError, InvalidKeyError
from .columns import Columns
from .dialect import Dialect, Session, Statements
from .models import CHANGE_TABLE, ENTRY_KEY_LENGTH, ENTRY_TABLE, VERSION_TABLE
from .standard import NEW_COLUMNS

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["MysqlDialect"]


def _mysql_errors() -> tuple[type[BaseException], ...]:
    # asyncmy by default; Tortoise also runs on aiomysql (pymysql's errors).
    for module in ("asyncmy.errors", "pymysql.err"):
        try:
            return (importlib.import_module(module).MySQLError,)
        except ImportError:
            continue
    return ()


def quote(name: str) -> str:
    """An identifier in backquotes."""
    return "`" + name.replace("`", "``") + "`"


class MysqlStatements(Statements):
    """The SQL of one dict on MySQL or MariaDB, with ``$n`` parameters (the session maps them to the
    driver's ``%s``).

    Keys from the log are compared as bytes, then in the key column's own collation (its index stays
    usable). Under the version row's lock, the plain reads of a write see every earlier commit (READ
    COMMITTED).
    The log is read without DISTINCT: its temporary table costs more than looking a key up twice.
    """

    def __init__(self, cols: Columns, collation: str, charset: str, row_alias: bool) -> None:
        q = quote
        t = (q(cols.schema) + "." if cols.schema else "") + q(cols.table)
        k, v, ver, chg = q(cols.key), q(cols.value), q(VERSION_TABLE), q(CHANGE_TABLE)
        ks = q(cols.keyspace) if cols.keyspace else None
        if not re.fullmatch(r"\w+", collation) or not re.fullmatch(r"\w+", charset):
            raise BackendError(f"unexpected collation {collation!r} of the key column")

        def scoped(n: int, joiner: str = " AND ") -> str:
            return f"{joiner}t.{ks} = ${n}" if ks else ""

        def scoped_bare(n: int, joiner: str = " AND ") -> str:
            return f"{joiner}{ks} = ${n}" if ks else ""

        # Exact, whatever the log table's collation: the index finds the candidates, bytes decide.
        named = "`name` = $1 AND CAST(`name` AS BINARY) = CAST($1 AS BINARY)"
        cols_in = f"{k}, {v}, {ks}" if ks else f"{k}, {v}"
        vals_in = "$1, $2, $3" if ks else "$1, $2"
        self.ensure_version: str = (
            f"INSERT INTO {ver} (`name`, `version`, `horizon`, `store`, `secret`) VALUES ($1, 0, 0, $2, $3) "
            "ON DUPLICATE KEY UPDATE `name` = `name`"
        )
        self.fill_identity: str = f"UPDATE {ver} SET `store` = COALESCE(`store`, $2), `secret` = COALESCE(`secret`, $3) WHERE `name` = $1"
        self.identity: str = f"SELECT `store`, `secret` FROM {ver} WHERE `name` = $1"
        self.load: str = (
            f"SELECT v.`version`, v.`token`, t.{k}, t.{v} FROM {ver} v "
            f"LEFT JOIN {t} t ON {scoped(2, '') or 'TRUE'} WHERE v.`name` = $1"
        )
        self.since: str = (
            f"SELECT v.`version`, v.`horizon`, v.`token`, "
            f"(SELECT `token` FROM {chg} WHERE {named} AND `version` = $2 LIMIT 1), "
            f"CONVERT(c.`k` USING utf8mb4), "
            f"(SELECT t.{v} FROM {t} t WHERE t.{k} = CONVERT(c.`k` USING {charset}) COLLATE {collation}{scoped(3)}) "
            f"FROM {ver} v LEFT JOIN (SELECT CAST(`key` AS BINARY) AS `k` FROM {chg} "
            f"WHERE {named} AND `version` > $2) c ON TRUE WHERE v.`name` = $1"
        )
        self.lock: str = f"SELECT `version`, `token` FROM {ver} WHERE `name` = $1 FOR UPDATE"
        self.commit: str = f"UPDATE {ver} SET `version` = $2, `token` = $3 WHERE `name` = $1"
        if row_alias:
            # MySQL 8.0.20 deprecates VALUES() in ON DUPLICATE KEY UPDATE; MariaDB has no row alias.
            self.upsert: str = f"INSERT INTO {t} ({cols_in}) VALUES ({vals_in}) AS `new` ON DUPLICATE KEY UPDATE {v} = `new`.{v}"
        else:
            self.upsert = (
                f"INSERT INTO {t} ({cols_in}) VALUES ({vals_in}) ON DUPLICATE KEY UPDATE {v} = VALUES({v})"
            )
        self.get: str = f"SELECT t.{v} FROM {t} t WHERE t.{k} = $1{scoped(2)}"
        self.delete: str = f"DELETE FROM {t} WHERE {k} = $1{scoped_bare(2)}"
        self.select_all: str = f"SELECT t.{k}, t.{v} FROM {t} t{scoped(1, ' WHERE ')}"
        self.delete_all: str = f"DELETE FROM {t}{scoped_bare(1, ' WHERE ')}"
        self.log: str = f"INSERT INTO {chg} (`name`, `version`, `key`, `token`) VALUES ($1, $2, $3, $4)"
        self.trim: str = f"DELETE FROM {chg} WHERE {named} AND `version` < $2"
        self.horizon: str = f"UPDATE {ver} SET `horizon` = $2 WHERE `name` = $1 AND `horizon` < $2"
        self.forget_log: str = f"DELETE FROM {chg} WHERE {named}"
        self.forget_version: str = f"DELETE FROM {ver} WHERE `name` = $1"


def _library_ddl(with_entry: bool) -> list[str]:
    """The library's tables on MySQL: InnoDB, utf8mb4, names and keys compared as bytes."""
    text = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    tail = f" ENGINE=InnoDB DEFAULT {text}"
    statements = [
        (
            f"CREATE TABLE IF NOT EXISTS `{VERSION_TABLE}` (`name` VARCHAR(255) {text} NOT NULL PRIMARY KEY, "
            f"`version` BIGINT NOT NULL, `horizon` BIGINT NOT NULL, `token` VARCHAR(32) NULL, "
            f"`store` VARCHAR(32) NULL, `secret` VARCHAR(64) NULL){tail}"
        ),
        (
            f"CREATE TABLE IF NOT EXISTS `{CHANGE_TABLE}` (`id` BIGINT NOT NULL PRIMARY KEY AUTO_INCREMENT, "
            f"`name` VARCHAR(255) {text} NOT NULL, `version` BIGINT NOT NULL, `key` LONGTEXT {text} NOT NULL, "
            f"`token` VARCHAR(32) NULL, KEY `aiodurabledict_change_name_version` (`name`, `version`)){tail}"
        ),
    ]
    if with_entry:
        # (255 + 512) characters of at most 4 bytes: 3068 bytes, under InnoDB's 3072-byte index limit.
        statements.append(
            f"CREATE TABLE IF NOT EXISTS `{ENTRY_TABLE}` (`id` BIGINT NOT NULL PRIMARY KEY AUTO_INCREMENT, "
            f"`keyspace` VARCHAR(255) {text} NOT NULL, `key` VARCHAR({ENTRY_KEY_LENGTH}) {text} NOT NULL, "
            f"`value` LONGBLOB NOT NULL, UNIQUE KEY `uid_aiodurabled_keyspac_200fe1` (`keyspace`, `key`)){tail}"
        )
    return statements


def _binary_collation(collation: str | None) -> bool:
    """Whether equal strings under ``collation`` are equal bytes (up to trailing spaces when it pads)."""
    return collation is None or collation == "binary" or collation.endswith("_bin")


def _pads(collation: str | None) -> bool:
    """PAD SPACE collations compare ``"a "`` equal to ``"a"``; MariaDB's ``nopad`` and MySQL's
    ``0900`` collations do not."""
    return (
        collation is not None
        and collation != "binary"
        and "nopad" not in collation
        and "0900" not in collation
    )


def _row_alias(server: str) -> bool:
    """Whether the server takes ``INSERT … AS new`` (MySQL 8.0.19 and later; no MariaDB)."""
    if "mariadb" in server.lower():
        return False
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", server)
    return found is not None and tuple(int(n) for n in found.groups()) >= (8, 0, 19)


_PARAMS: dict[str, tuple[str, tuple[int, ...]]] = {}


def _params(sql: str) -> tuple[str, tuple[int, ...]]:
    """``sql`` with its ``$n`` turned into the driver's ``%s``, and which argument each one takes."""
    found = _PARAMS.get(sql)
    if found is None:
        order: list[int] = []

        def mark(match: re.Match[str]) -> str:
            order.append(int(match.group(1)) - 1)
            return "%s"

        found = _PARAMS[sql] = (re.sub(r"\$(\d+)", mark, sql.replace("%", "%%")), tuple(order))
    return found


class _MysqlSession:
    """A connection of asyncmy (or aiomysql) from the client's pool."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def _run(self, sql: str, args: Sequence[Any]) -> Any:
        query, order = _params(sql)
        cursor = self.conn.cursor()
        # Without arguments the driver sends the text as is (no %% to undo).
        await cursor.execute(*((query, [args[i] for i in order]) if order else (sql,)))
        return cursor

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        cursor = await self._run(sql, args)
        try:
            return list(await cursor.fetchall())
        finally:
            await cursor.close()

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        cursor = await self._run(sql, args)
        await cursor.close()

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        query, order = _params(sql)
        cursor = self.conn.cursor()
        try:
            # The driver folds these into multi-row INSERTs where it can.
            await cursor.executemany(query, [[row[i] for i in order] for row in rows])
        finally:
            await cursor.close()


class MysqlDialect(Dialect):
    """A dict in a MySQL or MariaDB table."""

    kind = "mysql"
    errors: ClassVar[tuple[type[BaseException], ...]] = (
        *_mysql_errors(),
        DBConnectionError,
        OperationalError,
    )

    def __init__(self, cols: Columns, name: str, keyspace: str | None, log_keep: int) -> None:
        super().__init__(cols, name, keyspace, log_keep)
        self._sql: MysqlStatements | None = None
        # Whether the key column's collation ignores trailing spaces (PAD SPACE).
        self._pads = False

    @property
    def sql(self) -> MysqlStatements:
        """The statements, built by ``create()`` (they depend on the key column's collation)."""
        if self._sql is None:
            raise RuntimeError("the dict's statements are known once it has opened")
        return self._sql

    def check_key(self, key: str) -> None:
        """Refuse a key ending in a space where the key column's collation ignores trailing spaces."""
        if self._pads and key.endswith(" "):
            raise InvalidKeyError(
                "the key column's collation ignores trailing spaces, so this key would be another one's"
            )

    @asynccontextmanager
    async def session(self, client: BaseDBAsyncClient, *, write: bool = False) -> AsyncIterator[Session]:
        """A pool connection (in autocommit: every read sees every earlier commit); with ``write``, one
        READ COMMITTED transaction (no gap locks between dicts sharing a table)."""
        async with client.acquire_connection() as conn:
            session = _MysqlSession(conn)
            try:
                if write:
                    # For the next transaction only: the application's session settings stay as they are.
                    await session.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", ())
                    await conn.begin()
                yield session
                if write:
                    await conn.commit()
            except BaseException:
                # A statement cut short leaves its reply unread, and a failed one its transaction open:
                # the pool must never hand this connection out again (it drops closed ones).
                conn.close()
                raise

    async def create(self, client: BaseDBAsyncClient) -> None:
        """Create missing tables and columns, check the collations that decide key equality, build
        the statements."""
        cols = self.cols
        with_entry = cols.table == ENTRY_TABLE
        tables = [VERSION_TABLE, CHANGE_TABLE, *([ENTRY_TABLE] if with_entry else [])]
        in_tables = ", ".join(f"${i + 2}" for i in range(len(tables)))
        async with self.session(client) as s:
            found = await s.fetch(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(NULLIF($1, ''), DATABASE()) "
                f"AND TABLE_NAME IN ({in_tables})",
                [cols.schema, *tables],
            )
            if int(found[0][0]) < len(tables) or await _missing_columns(s, cols.schema):
                await _create(s, cols.schema, with_entry)
            wanted = [(cols.table, cols.key, "key"), (VERSION_TABLE, "name", "name")]
            if cols.keyspace:
                wanted.append((cols.table, cols.keyspace, "keyspace"))
            found = await s.fetch(
                "SELECT TABLE_NAME, COLUMN_NAME, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(NULLIF($1, ''), DATABASE()) AND TABLE_NAME IN ($2, $3) AND COLUMN_NAME IN ($4, $5, $6)",
                [cols.schema, cols.table, VERSION_TABLE, cols.key, "name", cols.keyspace or cols.key],
            )
            server = str((await s.fetch("SELECT VERSION()", ()))[0][0])
        columns = {(str(row[0]), str(row[1])): (row[2], row[3]) for row in found}
        for table, column, role in wanted:
            if (table, column) not in columns:
                raise BackendError(f"the {role} column {table}.{column} is missing")
            charset, collation = columns[table, column]
            if not _binary_collation(collation):
                raise BackendError(
                    f"the {role} column {table}.{column} has collation {collation}, which treats strings that "
                    "differ in case or accents as one; ModelDict needs keys compared exactly: "
                    f"ALTER TABLE `{table}` MODIFY `{column}` … CHARACTER SET {charset} COLLATE {charset}_bin"
                )
            if (
                role != "key"
                and _pads(collation)
                and (self.name.endswith(" ") or (self.keyspace or "").endswith(" "))
            ):
                raise BackendError(
                    f"the {role} column {table}.{column} ignores trailing spaces: the dict's name and keyspace "
                    "must not end with one"
                )
        charset, collation = columns[cols.table, cols.key]
        self._pads = _pads(collation)
        self._sql = MysqlStatements(
            cols, str(collation or "binary"), str(charset or "binary"), _row_alias(server)
        )


async def _missing_columns(s: Session, schema: str | None) -> list[tuple[str, str, str]]:
    """The columns the tables of an older release lack."""
    found = await s.fetch(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = COALESCE(NULLIF($1, ''), DATABASE()) AND TABLE_NAME IN ($2, $3)",
        [schema, VERSION_TABLE, CHANGE_TABLE],
    )
    have = {(str(row[0]), str(row[1])) for row in found}
    return [
        (table, column, kind)
        for table, columns in NEW_COLUMNS.items()
        for column, kind in columns.items()
        if (table, column) not in have
    ]


async def _create(s: Session, schema: str | None, with_entry: bool) -> None:
    """Create the tables and add missing columns, one process at a time (DDL commits on its own in
    MySQL, so a named lock stands in for the transaction)."""
    got = await s.fetch("SELECT GET_LOCK('aiodurabledict ddl', 30)", ())
    if not got or got[0][0] != 1:
        raise BackendError("another process holds the lock on the library's tables for more than 30 s")
    try:
        for statement in _library_ddl(with_entry):
            await s.execute(statement, ())
        for table, column, kind in await _missing_columns(s, schema):
            await s.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} {kind} NULL", ())
    finally:
        await s.execute("SELECT RELEASE_LOCK('aiodurabledict ddl')", ())
