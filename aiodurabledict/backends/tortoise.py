"""``ModelDict``: a dict kept in a database table through Tortoise ORM (SQLite, PostgreSQL, MySQL).

The database is the source of truth for the version: a row per dict in ``aiodurabledict_version``,
raised by one in the same transaction as every write, which also logs each changed key in
``aiodurabledict_change``. A cache catches up in one query (the log since its version joined with the
current values), flat in the table's size. memcached, when given, holds a copy of the version that
polls read instead of the database; it is only a hint. PostgreSQL also pushes each commit by NOTIFY.

Choices worth knowing:

- The dict never initialises Tortoise nor touches model metadata: it captures the application's
  ``TortoiseContext`` when built (or opened) and talks to that context's connection through the
  driver (aiosqlite, asyncpg, asyncmy or aiomysql), so the watcher works from any task and never
  joins, nor waits for, an application transaction on PostgreSQL or MySQL. On SQLite it shares the
  application's one connection (and its lock): do not write through a dict inside an open
  transaction of your own.
- Writes lock the version row first (``BEGIN IMMEDIATE`` on SQLite, waiting up to the connection's
  busy timeout, 5 s by default; the row lock of its ``UPDATE`` on PostgreSQL and MySQL), so writers
  from any number of processes serialise and ``setdefault`` has one winner.
- The memcached marker only moves up (compare-and-swap after each commit). A poll skips the database
  only when the marker equals the cache's version; missing, behind, ahead or unreachable, the
  database answers and the marker is set to the database's version, never a guess. Every
  ``confirm_interval`` a poll asks the database anyway (a writer may die between commit and marker).
  Each call is bounded by ``cache_timeout``; after a failure the client's idle connections are closed
  (aiomcache leaves a cut-short call's reply on a pooled connection) and memcached rests a second.
- On PostgreSQL the dict LISTENs on a connection of its own, opened with the application client's
  settings, rather than one held out of the application's pool: the pool keeps its size for queries,
  and a listening connection is never reset nor handed to another task. Each commit's NOTIFY carries
  the version and the values when they fit (about 7 KB), otherwise the version alone.
- A text value column stores the value's UTF-8 text; bytes that are not UTF-8 raise ``EncodeError``
  (use a ``BinaryField``, or ``RawCodec`` with a binary column). PostgreSQL text cannot hold NUL:
  such a key raises ``InvalidKeyError`` and such a text value ``EncodeError``; nothing is escaped,
  so other readers of the table see exactly what the dict wrote.
- MySQL and MariaDB (InnoDB) poll, like SQLite. Reads are single autocommit statements (each sees
  every earlier commit); writes run READ COMMITTED, reading under ``FOR UPDATE``. Keys are compared
  exactly, so the key and keyspace columns, and the version table's name, need a binary collation
  (``utf8mb4_bin``): a case-insensitive one, the default of tables Tortoise generates, would merge
  ``"a"`` and ``"A"``, and the dict refuses it at open (the error names the ``ALTER TABLE`` to run).
  The library's own tables are created with it. Under a PAD SPACE collation (``utf8mb4_bin``) a key
  ending in a space would equal the one without: such a key raises ``InvalidKeyError``.
- Write to the table only through dicts: a row changed behind their back is not logged and reaches
  other caches only when they reload. Other columns of your model need database defaults (or NULL).
"""

# ruff: noqa: S608 - identifiers come from model metadata and are quoted; values are always parameters.
from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from tortoise import fields as tfields
from tortoise.context import TortoiseContext, get_current_context

from .._backend import Delta
from .._dict import AsyncDurableDict
from .._types import DEFAULT_KEYSPACE
from ..errors import BackendError, EncodeError, InvalidKeyError, map_exceptions
from .tortoise_models import ENTRY_KEY_LENGTH, DictChange, DictVersion, DurableEntry

if TYPE_CHECKING:
    import aiomcache
    from tortoise.backends.base.client import BaseDBAsyncClient
    from tortoise.models import Model

__all__ = ["ModelDict", "TortoiseBackend", "open_url_dict"]

#: Longest key for a text key column without ``max_length``, in UTF-8 bytes (index entries are bounded).
TEXT_KEY_BYTES = 1024
#: NOTIFY payloads must stay under 8000 bytes; larger changes are announced by version only.
NOTIFY_PAYLOAD_BYTES = 7000

_VERSION_TABLE = DictVersion._meta.db_table
_CHANGE_TABLE = DictChange._meta.db_table
_ENTRY_TABLE = DurableEntry._meta.db_table
# Pool options of asyncpg that its connect() refuses; the LISTEN connection is not pooled.
_POOL_ONLY = frozenset(
    {"min_size", "max_size", "max_queries", "max_inactive_connection_lifetime", "setup", "init"}
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Columns:
    """Where the dict lives in the user's model: table, key, value and (optional) keyspace columns."""

    def __init__(self, model: type[Model], key_col: str, value_col: str, keyspace_col: str | None) -> None:
        meta = model._meta
        fields_map = meta.fields_map

        def column(name: str, role: str) -> tuple[str, tfields.Field[Any]]:
            field = fields_map.get(name)
            if field is None:
                raise ValueError(f"{model.__name__} has no field {name!r} to use as the {role} column")
            return field.source_field or name, field

        self.table = meta.db_table
        self.schema: str | None = getattr(meta, "schema", None)
        self.qualified = (_quote(self.schema) + "." if self.schema else "") + _quote(self.table)
        self.key, key_field = column(key_col, "key")
        self.value, value_field = column(value_col, "value")
        if not isinstance(key_field, tfields.CharField | tfields.TextField):
            raise TypeError(
                f"the key column {key_col!r} of {model.__name__} must be a CharField or TextField"
            )
        if isinstance(value_field, tfields.BinaryField):
            self.binary = True
        elif isinstance(value_field, tfields.CharField | tfields.TextField):
            self.binary = False
        else:
            raise TypeError(
                f"the value column {value_col!r} of {model.__name__} must be a TextField, CharField or BinaryField"
            )
        max_length = getattr(key_field, "max_length", None)
        # A limit in characters is one in bytes too (a character is at least one byte).
        self.max_key_bytes = int(max_length) if max_length else TEXT_KEY_BYTES
        value_length = getattr(value_field, "max_length", None)
        self.max_value_bytes: int | None = int(value_length) if value_length else None

        self.keyspace: str | None = None
        if keyspace_col is not None:
            self.keyspace, _ = column(keyspace_col, "keyspace")
        conflict = (keyspace_col, key_col) if keyspace_col else (key_col,)
        unique = {tuple(sorted(group)) for group in meta.unique_together}
        if keyspace_col is None and not (key_field.pk or key_field.unique):
            raise ValueError(
                f"the key column {key_col!r} of {model.__name__} must be unique (or the primary key)"
            )
        if keyspace_col is not None and tuple(sorted(conflict)) not in unique:
            raise ValueError(f"{model.__name__} needs unique_together = (({keyspace_col!r}, {key_col!r}),)")
        self.conflict = ", ".join(_quote(c) for c in ([self.keyspace] if self.keyspace else []) + [self.key])


class _Statements:
    """The SQL of one dict, written with ``$n`` parameters (SQLite takes them as ``?n``).

    Where the table holds many dicts, the keyspace is always the last parameter.
    """

    def __init__(self, cols: _Columns, dialect: str) -> None:
        t, k, v, ver, chg = (
            cols.qualified,
            _quote(cols.key),
            _quote(cols.value),
            _VERSION_TABLE,
            _CHANGE_TABLE,
        )
        ks = _quote(cols.keyspace) if cols.keyspace else None

        def scoped(n: int, joiner: str = " AND ") -> str:
            return f"{joiner}t.{ks} = ${n}" if ks else ""

        cols_in = f"{k}, {v}, {ks}" if ks else f"{k}, {v}"
        vals_in = "$1, $2, $3" if ks else "$1, $2"
        self.ensure_version = f'INSERT INTO "{ver}" ("name", "version", "horizon") VALUES ($1, 0, 0) ON CONFLICT ("name") DO NOTHING'
        self.load = (
            f'SELECT v."version", t.{k}, t.{v} FROM "{ver}" v '
            f'LEFT JOIN {t} t ON {scoped(2, "") or "TRUE"} WHERE v."name" = $1'
        )
        # The value comes from a correlated subquery: one index lookup per changed key, whatever the
        # planner believes about the table's size (a join may be planned as a scan of the whole dict).
        self.since = (
            f'SELECT v."version", v."horizon", c."key", (SELECT t.{v} FROM {t} t WHERE t.{k} = c."key"{scoped(3)}) '
            f'FROM "{ver}" v LEFT JOIN (SELECT DISTINCT "key" FROM "{chg}" WHERE "name" = $1 AND "version" > $2) c '
            'ON TRUE WHERE v."name" = $1'
        )
        self.bump = f'UPDATE "{ver}" SET "version" = "version" + 1 WHERE "name" = $1 RETURNING "version"'
        self.upsert = (
            f"INSERT INTO {t} ({cols_in}) VALUES ({vals_in}) "
            f"ON CONFLICT ({cols.conflict}) DO UPDATE SET {v} = excluded.{v}"
        )
        # A row whose value is NULL counts as absent everywhere, so setdefault may fill it.
        self.insert_new = (
            f"INSERT INTO {t} AS t ({cols_in}) VALUES ({vals_in}) "
            f"ON CONFLICT ({cols.conflict}) DO UPDATE SET {v} = excluded.{v} WHERE t.{v} IS NULL RETURNING {k}"
        )
        self.get = f"SELECT t.{v} FROM {t} t WHERE t.{k} = $1{scoped(2)}"
        self.delete = f"DELETE FROM {t} AS t WHERE t.{k} = $1{scoped(2)} RETURNING {v}"
        self.clear = f"DELETE FROM {t} AS t{scoped(1, ' WHERE ')} RETURNING {k}, {v}"
        self.log = f'INSERT INTO "{chg}" ("name", "version", "key") VALUES ($1, $2, $3)'
        self.trim = f'DELETE FROM "{chg}" WHERE "name" = $1 AND "version" <= $2'
        self.horizon = f'UPDATE "{ver}" SET "horizon" = $2 WHERE "name" = $1 AND "horizon" < $2'
        self.notify = "SELECT pg_notify($1, $2)"
        if dialect == "postgres":
            # set() in one statement: the version row is locked first (the other parts read its new
            # version), the row and the log follow, and NOTIFY goes out at commit.
            n = 6 if ks else 4
            set_cte = (
                f'WITH v AS (UPDATE "{ver}" SET "version" = "version" + 1 WHERE "name" = $1 RETURNING "version"), '
                f"w AS (INSERT INTO {t} ({cols_in}) SELECT $2, $3{', $' + str(n) if ks else ''} FROM v "
                f"ON CONFLICT ({cols.conflict}) DO UPDATE SET {v} = excluded.{v}), "
                f'l AS (INSERT INTO "{chg}" ("name", "version", "key") SELECT $1, "version", $2 FROM v) '
            )
            self.set_notify = set_cte + 'SELECT "version", pg_notify($4, \'{"v":\' || "version" || $5) FROM v'
            self.set_quiet = set_cte.replace(f"${n}", "$4") + 'SELECT "version" FROM v'
        if dialect == "sqlite":
            for name, sql in vars(self).items():
                setattr(self, name, re.sub(r"\$(\d+)", r"?\1", sql))


def _ddl(dialect: str, with_entry: bool) -> list[str]:
    """The library's tables, as Tortoise generates them from ``tortoise_models``."""
    serial = (
        "INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL"
        if dialect == "sqlite"
        else "BIGSERIAL NOT NULL PRIMARY KEY"
    )
    blob = "BLOB" if dialect == "sqlite" else "BYTEA"
    statements = [
        (
            f'CREATE TABLE IF NOT EXISTS "{_VERSION_TABLE}" ("name" VARCHAR(255) NOT NULL PRIMARY KEY, '
            '"version" BIGINT NOT NULL, "horizon" BIGINT NOT NULL)'
        ),
        (
            f'CREATE TABLE IF NOT EXISTS "{_CHANGE_TABLE}" ("id" {serial}, "name" VARCHAR(255) NOT NULL, '
            '"version" BIGINT NOT NULL, "key" TEXT NOT NULL)'
        ),
        f'CREATE INDEX IF NOT EXISTS "aiodurabledict_change_name_version" ON "{_CHANGE_TABLE}" ("name", "version")',
    ]
    if with_entry:
        statements.append(
            f'CREATE TABLE IF NOT EXISTS "{_ENTRY_TABLE}" ("id" {serial}, "keyspace" VARCHAR(255) NOT NULL, '
            f'"key" VARCHAR({ENTRY_KEY_LENGTH}) NOT NULL, "value" {blob} NOT NULL, '
            'CONSTRAINT "uid_aiodurabled_keyspac_200fe1" UNIQUE ("keyspace", "key"))'
        )
    return statements


def _mysql_quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class _MysqlStatements(_Statements):
    """The SQL of one dict on MySQL or MariaDB, with the same ``$n`` parameters (the session maps them
    to the driver's ``%s``).

    MySQL has no ``RETURNING`` on ``UPDATE``: the version comes back in the OK packet of the bump,
    through ``LAST_INSERT_ID(expr)``; ``pop`` and ``clear`` read the rows ``FOR UPDATE`` first. Keys
    from the log are compared as bytes, then in the key column's own collation (its index stays usable).
    The log is read without DISTINCT: its temporary table costs more than looking a key up twice.
    """

    def __init__(self, cols: _Columns, collation: str, charset: str, row_alias: bool) -> None:
        q = _mysql_quote
        t = (q(cols.schema) + "." if cols.schema else "") + q(cols.table)
        k, v, ver, chg = q(cols.key), q(cols.value), q(_VERSION_TABLE), q(_CHANGE_TABLE)
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
        self.ensure_version = (
            f"INSERT INTO {ver} (`name`, `version`, `horizon`) VALUES ($1, 0, 0) "
            "ON DUPLICATE KEY UPDATE `name` = `name`"
        )
        self.load = (
            f"SELECT v.`version`, t.{k}, t.{v} FROM {ver} v "
            f"LEFT JOIN {t} t ON {scoped(2, '') or 'TRUE'} WHERE v.`name` = $1"
        )
        self.since = (
            f"SELECT v.`version`, v.`horizon`, CONVERT(c.`k` USING utf8mb4), "
            f"(SELECT t.{v} FROM {t} t WHERE t.{k} = CONVERT(c.`k` USING {charset}) COLLATE {collation}{scoped(3)}) "
            f"FROM {ver} v LEFT JOIN (SELECT CAST(`key` AS BINARY) AS `k` FROM {chg} "
            f"WHERE {named} AND `version` > $2) c ON TRUE WHERE v.`name` = $1"
        )
        self.bump = f"UPDATE {ver} SET `version` = LAST_INSERT_ID(`version` + 1) WHERE `name` = $1"
        if row_alias:
            # MySQL 8.0.20 deprecates VALUES() in ON DUPLICATE KEY UPDATE; MariaDB has no row alias.
            self.upsert = f"INSERT INTO {t} ({cols_in}) VALUES ({vals_in}) AS `new` ON DUPLICATE KEY UPDATE {v} = `new`.{v}"
        else:
            self.upsert = (
                f"INSERT INTO {t} ({cols_in}) VALUES ({vals_in}) ON DUPLICATE KEY UPDATE {v} = VALUES({v})"
            )
        self.get = f"SELECT t.{v} FROM {t} t WHERE t.{k} = $1{scoped(2)}"
        self.get_locked = self.get + " FOR UPDATE"
        self.delete = f"DELETE FROM {t} WHERE {k} = $1{scoped_bare(2)}"
        self.select_locked = f"SELECT t.{k}, t.{v} FROM {t} t{scoped(1, ' WHERE ')} FOR UPDATE"
        self.delete_all = f"DELETE FROM {t}{scoped_bare(1, ' WHERE ')}"
        self.log = f"INSERT INTO {chg} (`name`, `version`, `key`) VALUES ($1, $2, $3)"
        self.trim = f"DELETE FROM {chg} WHERE {named} AND `version` <= $2"
        self.horizon = f"UPDATE {ver} SET `horizon` = $2 WHERE `name` = $1 AND `horizon` < $2"
        self.notify = ""


def _mysql_ddl(with_entry: bool) -> list[str]:
    """The library's tables on MySQL: InnoDB, utf8mb4, names and keys compared as bytes."""
    text = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    tail = f" ENGINE=InnoDB DEFAULT {text}"
    statements = [
        (
            f"CREATE TABLE IF NOT EXISTS `{_VERSION_TABLE}` (`name` VARCHAR(255) {text} NOT NULL PRIMARY KEY, "
            f"`version` BIGINT NOT NULL, `horizon` BIGINT NOT NULL){tail}"
        ),
        (
            f"CREATE TABLE IF NOT EXISTS `{_CHANGE_TABLE}` (`id` BIGINT NOT NULL PRIMARY KEY AUTO_INCREMENT, "
            f"`name` VARCHAR(255) {text} NOT NULL, `version` BIGINT NOT NULL, `key` LONGTEXT {text} NOT NULL, "
            f"KEY `aiodurabledict_change_name_version` (`name`, `version`)){tail}"
        ),
    ]
    if with_entry:
        # (255 + 512) characters of at most 4 bytes: 3068 bytes, under InnoDB's 3072-byte index limit.
        statements.append(
            f"CREATE TABLE IF NOT EXISTS `{_ENTRY_TABLE}` (`id` BIGINT NOT NULL PRIMARY KEY AUTO_INCREMENT, "
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


class _Session(Protocol):
    """One driver connection, as the backend uses it."""

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]: ...

    async def execute(self, sql: str, args: Sequence[Any]) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


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


_MYSQL_PARAMS: dict[str, tuple[str, tuple[int, ...]]] = {}


def _mysql_params(sql: str) -> tuple[str, tuple[int, ...]]:
    """``sql`` with its ``$n`` turned into the driver's ``%s``, and which argument each one takes."""
    found = _MYSQL_PARAMS.get(sql)
    if found is None:
        order: list[int] = []

        def mark(match: re.Match[str]) -> str:
            order.append(int(match.group(1)) - 1)
            return "%s"

        found = _MYSQL_PARAMS[sql] = (re.sub(r"\$(\d+)", mark, sql.replace("%", "%%")), tuple(order))
    return found


class _MysqlSession:
    """A connection of asyncmy (or aiomysql) from the client's pool."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def _run(self, sql: str, args: Sequence[Any]) -> Any:
        query, order = _mysql_params(sql)
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

    async def execute_id(self, sql: str, args: Sequence[Any]) -> tuple[int, int]:
        """Rows changed and the id the server reported (``LAST_INSERT_ID(expr)`` sets it)."""
        cursor = await self._run(sql, args)
        try:
            return int(cursor.rowcount), int(cursor.lastrowid or 0)
        finally:
            await cursor.close()

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        query, order = _mysql_params(sql)
        cursor = self.conn.cursor()
        try:
            # The driver folds these into multi-row INSERTs where it can.
            await cursor.executemany(query, [[row[i] for i in order] for row in rows])
        finally:
            await cursor.close()


class _Marker:
    """A copy of the dict's version in memcached: a hint that only ever moves up, never trusted alone.

    aiomcache has no timeouts and, when a call is cancelled, returns the connection to its pool with
    the reply unread (the next call on it reads the wrong answer). So every call is bounded, and a
    call that did not finish closes the pool's idle connections. After a failure the marker is left
    alone for ``backoff`` seconds, so that a dead memcached costs writers and polls nothing.
    """

    def __init__(self, client: aiomcache.Client, key: bytes, timeout: float, backoff: float = 1.0) -> None:
        self.client = client
        self.key = key
        self.timeout = timeout
        self.backoff = backoff
        self.down_until = 0.0
        self.failures = 0

    def _reset(self) -> None:
        pool = getattr(self.client, "_pool", None)
        idle = getattr(pool, "_pool", None)
        if pool is None or idle is None:
            return
        while not idle.empty():
            pool._do_close(idle.get_nowait())

    async def _call(self, method: str, *args: Any) -> Any:
        """One memcached call; ``None`` when memcached is down, slow or confused (the marker is a hint)."""
        if time.monotonic() < self.down_until:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await getattr(self.client, method)(self.key, *args)
        except asyncio.CancelledError:
            self._reset()
            raise
        except Exception:  # noqa: BLE001
            # TimeoutError, OSError, aiomcache.ClientException: whatever it was, start afresh.
            self._reset()
            self.failures += 1
            self.down_until = time.monotonic() + self.backoff
            return None

    async def read(self) -> tuple[int | None, int | None]:
        """The marker's version and CAS token; ``(None, None)`` when missing or unreadable."""
        got = await self._call("gets")
        if got is None or got[0] is None:
            return None, None
        raw, token = got
        try:
            return int(raw), token
        except ValueError:
            return None, token

    async def raise_to(
        self, version: int, attempts: int = 4, *, known: tuple[int | None, int | None] | None = None
    ) -> bool:
        """Make the marker at least ``version`` (compare-and-swap, so it never goes down).

        ``known``: the marker and its cas token as just read, which saves the first read.
        """
        value = str(version).encode()
        for _ in range(attempts):
            current, token = known if known is not None else await self.read()
            known = None
            if current is not None and current >= version:
                return True
            if token is None:
                if time.monotonic() < self.down_until:
                    return False
                if await self._call("add", value):
                    return True
            elif await self._call("cas", value, token):
                return True
            if time.monotonic() < self.down_until:
                return False
        return False

    async def lower_to(self, version: int, token: int) -> None:
        """Put the marker back to the database's version, unless it moved since it was read."""
        await self._call("cas", str(version).encode(), token)


class TortoiseBackend:
    """The store side of ``ModelDict``: one dict in one table of a database Tortoise connects to.

    Options: ``name`` (the dict's row in the version table; default: the table name, plus
    ``/keyspace``), ``cache`` (an ``aiomcache.Client`` for the version marker), ``cache_timeout``
    (seconds per memcached call), ``confirm_interval`` (seconds after which a poll checks the
    database even though the marker says nothing changed: the net under a writer that died between
    its commit and the marker), ``poll_interval``, ``log_keep`` (versions of log kept) and
    ``marker_key``.
    """

    dense_versions = True

    def __init__(
        self,
        model: type[Model],
        *,
        key_col: str = "key",
        value_col: str = "value",
        keyspace: str | None = None,
        keyspace_col: str | None = None,
        name: str | None = None,
        cache: aiomcache.Client | None = None,
        cache_timeout: float = 0.25,
        confirm_interval: float = 10.0,
        poll_interval: float = 1.0,
        log_keep: int = 1000,
        marker_key: str | None = None,
        connection: str | None = None,
        context: TortoiseContext | None = None,
        _owned_url: str | None = None,
    ) -> None:
        if keyspace_col is None and keyspace is not None:
            keyspace_col = "keyspace"
        if keyspace_col is not None and keyspace is None:
            keyspace = DEFAULT_KEYSPACE
        if keyspace is not None and not keyspace:
            raise ValueError("keyspace must not be empty")
        if log_keep < 1:
            raise ValueError("log_keep must be at least 1")
        self._model = model
        self._cols = _Columns(model, key_col, value_col, keyspace_col)
        self._keyspace = keyspace
        self._name = name or (self._cols.table + (f"/{keyspace}" if keyspace is not None else ""))
        if len(self._name) > 255:
            raise ValueError("the dict's name is longer than 255 characters")
        self.max_key_bytes = self._cols.max_key_bytes
        self.max_value_bytes = self._cols.max_value_bytes
        self.poll_interval = poll_interval
        self._cache = cache
        self._cache_timeout = cache_timeout
        self._confirm_interval = confirm_interval
        self._log_keep = log_keep
        self._trim_every = max(1, min(100, log_keep // 4))
        self._marker_key = marker_key
        self._alias = connection
        self._owned_url = _owned_url
        self._owned: BaseDBAsyncClient | None = None
        # Captured now, while the application's context is current: open() may run in another task.
        self._context = context if context is not None else (None if _owned_url else get_current_context())
        if self._context is not None and self._alias is None:
            self._alias = _alias_of(model, self._context)
        self._dialect = ""
        self._sql: _Statements | None = None
        self._my: _MysqlStatements | None = None
        # Whether the key column's collation ignores trailing spaces (MySQL PAD SPACE).
        self._pads = False
        self._marker: _Marker | None = None
        self._owed = 0
        self._confirm_due = 0.0
        self._channel = ""
        # Off only in tests, to lose every NOTIFY.
        self._publish = True

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Find the connection, create the library's tables if missing, and this dict's version row.

        On failure the dict calls ``aclose()``, which releases what was made.
        """
        with map_exceptions(message="cannot prepare the database"):
            if self._owned_url is not None and self._owned is None:
                self._owned = _client_for_url(self._owned_url)
            client = self._client()
            dialect = client.capabilities.dialect
            if dialect == "postgres" and not type(client).__module__.startswith("tortoise.backends.asyncpg"):
                raise BackendError(
                    "ModelDict on PostgreSQL needs Tortoise's asyncpg client (postgres:// URLs)"
                )
            if dialect not in {"sqlite", "postgres", "mysql"}:
                raise BackendError(f"ModelDict supports SQLite, PostgreSQL and MySQL, not {dialect!r}")
            self._dialect = dialect
            # On MySQL the statements depend on the key column's collation: _prepare() reads it.
            self._sql = None if dialect == "mysql" else _Statements(self._cols, dialect)
            identity = self._identity(client)
            if self._cache is not None:
                key = (
                    self._marker_key or "aiodurabledict:" + hashlib.sha256(identity.encode()).hexdigest()[:40]
                )
                self._marker = _Marker(self._cache, key.encode(), self._cache_timeout)
            if dialect == "postgres":
                self._channel = "aiodurabledict_" + hashlib.sha256(identity.encode()).hexdigest()[:40]
                self.subscribe = self._subscribe
            await self._prepare(client)

    async def aclose(self) -> None:
        """Close the connection the dict opened itself (``open_dict`` URLs); never the application's."""
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.close()

    def _client(self) -> BaseDBAsyncClient:
        if self._owned is not None:
            return self._owned
        context = self._context or get_current_context()
        if context is None:
            raise BackendError(
                "no Tortoise context is active: initialise Tortoise before building or opening the dict"
            )
        self._context = context
        alias = self._alias or _alias_of(self._model, context)
        if alias is None:
            raise BackendError(
                f"{self._model.__name__} is bound to no Tortoise connection; is it registered?"
            )
        self._alias = alias
        client = context.connections.get(alias)
        # Inside an application transaction the context hands out its wrapper; use the connection itself.
        while getattr(client, "_parent", None) is not None and client._parent is not client:
            if client.capabilities.dialect == "sqlite" and not getattr(client, "_finalized", True):
                # One connection, locked by that transaction until it ends: waiting would never end.
                raise BackendError(
                    "on SQLite a dict cannot be used inside an open Tortoise transaction of the same task "
                    "(they share one connection); use it before or after the transaction"
                )
            client = client._parent
        return client

    def _identity(self, client: Any) -> str:
        """What tells this dict apart from every other one sharing a memcached or a PostgreSQL server."""
        if self._dialect == "sqlite":
            where = "sqlite:" + os.path.abspath(str(client.filename))
        elif self._dialect == "mysql":
            where = f"mysql:{client.host}:{client.port}/{self._cols.schema or client.database}"
        else:
            schema = self._cols.schema or client.schema or ""
            where = f"postgres:{client.host}:{client.port}/{client.database}/{schema}"
        return f"{where}\0{self._name}"

    async def _prepare(self, client: BaseDBAsyncClient) -> None:
        if self._dialect == "mysql":
            await self._prepare_mysql(client)
            return
        assert self._sql is not None
        with_entry = self._cols.table == _ENTRY_TABLE
        tables = [_VERSION_TABLE, _CHANGE_TABLE, *([_ENTRY_TABLE] if with_entry else [])]
        async with self._session(client) as s:
            if self._dialect == "sqlite":
                marks = ", ".join("?" for _ in tables)
                found = await s.fetch(
                    f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})", tables
                )
                missing = int(found[0][0]) < len(tables)
            else:
                found = await s.fetch(
                    "SELECT COUNT(to_regclass(t)) FROM unnest($1::text[]) AS t", [[_quote(t) for t in tables]]
                )
                missing = int(found[0][0]) < len(tables)
        if missing:
            # Only when a table is missing: DDL takes table locks that would queue behind writers.
            async with self._session(client, write=True) as s:
                if self._dialect == "postgres":
                    # Several processes may open their first dict at once: one creates, others wait.
                    await s.execute("SELECT pg_advisory_xact_lock(hashtext('aiodurabledict ddl'))", ())
                for statement in _ddl(self._dialect, with_entry):
                    await s.execute(statement, ())
        async with self._session(client) as s:
            await s.execute(self._sql.ensure_version, [self._name])

    async def _prepare_mysql(self, client: BaseDBAsyncClient) -> None:
        """Create missing tables, check the collations that decide key equality, build the statements."""
        cols = self._cols
        with_entry = cols.table == _ENTRY_TABLE
        tables = [_VERSION_TABLE, _CHANGE_TABLE, *([_ENTRY_TABLE] if with_entry else [])]
        in_tables = ", ".join(f"${i + 2}" for i in range(len(tables)))
        async with self._session(client) as s:
            found = await s.fetch(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(NULLIF($1, ''), DATABASE()) "
                f"AND TABLE_NAME IN ({in_tables})",
                [cols.schema, *tables],
            )
            if int(found[0][0]) < len(tables):
                for statement in _mysql_ddl(with_entry):
                    await s.execute(statement, ())
            wanted = [(cols.table, cols.key, "key"), (_VERSION_TABLE, "name", "name")]
            if cols.keyspace:
                wanted.append((cols.table, cols.keyspace, "keyspace"))
            found = await s.fetch(
                "SELECT TABLE_NAME, COLUMN_NAME, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(NULLIF($1, ''), DATABASE()) AND TABLE_NAME IN ($2, $3) AND COLUMN_NAME IN ($4, $5, $6)",
                [cols.schema, cols.table, _VERSION_TABLE, cols.key, "name", cols.keyspace or cols.key],
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
                and (self._name.endswith(" ") or (self._keyspace or "").endswith(" "))
            ):
                raise BackendError(
                    f"the {role} column {table}.{column} ignores trailing spaces: the dict's name and keyspace "
                    "must not end with one"
                )
        charset, collation = columns[cols.table, cols.key]
        self._pads = _pads(collation)
        self._my = self._sql = _MysqlStatements(
            cols, str(collation or "binary"), str(charset or "binary"), _row_alias(server)
        )
        async with self._session(client) as s:
            await s.execute(self._sql.ensure_version, [self._name])

    # -- sessions --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _session(self, client: Any = None, *, write: bool = False) -> AsyncIterator[_Session]:
        """A driver connection; with ``write``, inside a transaction that commits when the block ends."""
        client = client or self._client()
        async with client.acquire_connection() as conn:
            if self._dialect == "sqlite":
                session = _SqliteSession(conn)
                if not write:
                    yield session
                    return
                # IMMEDIATE takes the write lock now (waiting up to the busy timeout), never halfway.
                try:
                    await session.execute("BEGIN IMMEDIATE", ())
                    yield session
                    await session.execute("COMMIT", ())
                except BaseException:
                    await _queue_rollback(session)
                    raise
            elif self._dialect == "mysql":
                async with _mysql_session(conn, write) as mine:
                    yield mine
            elif write:
                async with conn.transaction():
                    yield _PostgresSession(conn)
            else:
                yield _PostgresSession(conn)

    def _scope(self, *args: Any) -> list[Any]:
        """Statement arguments: ``args``, then the keyspace where the table holds many dicts."""
        return [*args, self._keyspace] if self._keyspace is not None else list(args)

    # -- reads -----------------------------------------------------------------------------------

    async def load(self) -> Delta:
        """Every entry and the version, read by one statement (one snapshot)."""
        assert self._sql is not None
        async with self._session() as s:
            rows = await s.fetch(self._sql.load, self._scope(self._name))
        if not rows:
            raise BackendError(f"the version row of dict {self._name!r} is missing")
        out = self._out
        changes = {row[1]: out(row[2]) for row in rows if row[1] is not None and row[2] is not None}
        return Delta(version=int(rows[0][0]), changes=changes, full=True)

    async def changes_since(self, version: int) -> Delta:
        """What changed after ``version``: one memcached read when the marker says nothing did,
        otherwise one query (two when ``version`` is older than the log's horizon)."""
        assert self._sql is not None
        marker = self._marker
        seen: int | None = None
        token: int | None = None
        if marker is not None:
            if self._owed:
                await self._raise_marker(self._owed)
            if time.monotonic() < self._confirm_due:
                seen, token = await marker.read()
                if seen is not None and seen == version:
                    return Delta(version=version, prev=version)
        async with self._session() as s:
            rows = await s.fetch(self._sql.since, self._scope(self._name, version))
        if not rows:
            raise BackendError(f"the version row of dict {self._name!r} is missing")
        current, horizon = int(rows[0][0]), int(rows[0][1])
        if marker is not None:
            self._confirm_due = time.monotonic() + self._confirm_interval
            if seen is not None and token is not None and seen > current:
                # Ahead of the database (restored from a backup, or another database's marker).
                await marker.lower_to(current, token)
            elif seen != current:
                await self._raise_marker(
                    current, known=None if seen is None and token is None else (seen, token)
                )
        if version >= current:
            return Delta(version=current, prev=current) if version == current else await self.load()
        if version < horizon:
            return await self.load()
        out = self._out
        changes = {row[2]: (None if row[3] is None else out(row[3])) for row in rows if row[2] is not None}
        return Delta(version=current, changes=changes, prev=version)

    def _out(self, raw: Any) -> bytes:
        return bytes(raw) if self._cols.binary else str(raw).encode("utf-8")

    # -- writes ----------------------------------------------------------------------------------

    def _in(self, key: str, value: bytes | None = None) -> Any:
        """Check a key (and convert a value) for the column types; nothing is escaped."""
        if self._dialect == "postgres" and "\x00" in key:
            raise InvalidKeyError("PostgreSQL text cannot hold NUL characters; this key has one")
        if self._pads and key.endswith(" "):
            raise InvalidKeyError(
                "the key column's collation ignores trailing spaces, so this key would be another one's"
            )
        if value is None or self._cols.binary:
            return value
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise EncodeError(
                f"the value for key {key!r} is not UTF-8 text, and the value column is text "
                "(use a BinaryField value column for binary values)"
            ) from None
        if self._dialect == "postgres" and "\x00" in text:
            raise EncodeError(f"the value for key {key!r} holds NUL, which PostgreSQL text cannot store")
        return text

    async def _begin(self, s: _Session) -> int:
        """Lock the dict and take the next version (the first statement of every write)."""
        assert self._sql is not None
        if isinstance(s, _MysqlSession):
            changed, version = await s.execute_id(self._sql.bump, [self._name])
            rows: list[Sequence[Any]] = [[version]] if changed else []
        else:
            rows = await s.fetch(self._sql.bump, [self._name])
        if not rows:
            raise BackendError(f"the version row of dict {self._name!r} is missing")
        version = int(rows[0][0])
        if self._trim_due(version):
            await self._trim(s, version)
        return version

    def _trim_due(self, version: int) -> bool:
        return version % self._trim_every == 0 and version > self._log_keep

    async def _trim(self, s: _Session, version: int) -> None:
        """Forget the log up to ``version - log_keep``; the horizon moves first, so that a reader
        never takes a log with holes for a whole one."""
        assert self._sql is not None
        horizon = version - self._log_keep
        await s.execute(self._sql.horizon, [self._name, horizon])
        await s.execute(self._sql.trim, [self._name, horizon])

    async def _log(self, s: _Session, version: int, changes: Mapping[str, bytes | None]) -> None:
        assert self._sql is not None
        await s.executemany(self._sql.log, [[self._name, version, key] for key in changes])
        if self._dialect == "postgres" and self._publish:
            await s.execute(self._sql.notify, [self._channel, _payload(version, changes)])

    async def _after(self, delta: Delta) -> Delta:
        await self._raise_marker(delta.version)
        return delta

    async def set(self, key: str, value: bytes) -> Delta:
        """Upsert one row (on PostgreSQL in one statement: one round trip)."""
        assert self._sql is not None
        stored = self._in(key, value)
        if self._dialect == "postgres":
            version = await self._set_in_one_statement(key, value, stored)
        else:
            async with self._session(write=True) as s:
                version = await self._begin(s)
                await s.execute(self._sql.upsert, self._scope(key, stored))
                await self._log(s, version, {key: value})
        return await self._after(Delta(version=version, changes={key: value}, prev=version - 1))

    async def _set_in_one_statement(self, key: str, value: bytes, stored: Any) -> int:
        assert self._sql is not None
        if self._publish:
            sql, args = (
                self._sql.set_notify,
                [self._name, key, stored, self._channel, _payload_tail({key: value})],
            )
        else:
            sql, args = self._sql.set_quiet, [self._name, key, stored]
        async with self._session() as s:
            rows = await s.fetch(sql, self._scope(*args))
            if not rows:
                raise BackendError(f"the version row of dict {self._name!r} is missing")
            version = int(rows[0][0])
            if self._trim_due(version):
                # Its own transaction, after the write: trimming late is harmless.
                async with s.conn.transaction():  # type: ignore[attr-defined]
                    await self._trim(s, version)
        return version

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        """Upsert every row in one transaction."""
        assert self._sql is not None
        rows = [self._scope(key, self._in(key, value)) for key, value in items.items()]
        async with self._session(write=True) as s:
            version = await self._begin(s)
            await s.executemany(self._sql.upsert, rows)
            await self._log(s, version, items)
        return await self._after(Delta(version=version, changes=dict(items), prev=version - 1))

    async def pop(self, key: str) -> tuple[Delta, bytes] | None:
        """Delete one row and return its value; ``None`` (nothing committed) when it is absent."""
        assert self._sql is not None
        self._in(key)
        try:
            async with self._session(write=True) as s:
                version = await self._begin(s)
                if self._my is not None:
                    rows = await s.fetch(self._my.get_locked, self._scope(key))
                else:
                    rows = await s.fetch(self._sql.delete, self._scope(key))
                if not rows or rows[0][0] is None:
                    raise _NothingWritten
                if self._my is not None:
                    await s.execute(self._my.delete, self._scope(key))
                await self._log(s, version, {key: None})
        except _NothingWritten:
            return None
        delta = await self._after(Delta(version=version, changes={key: None}, prev=version - 1))
        return delta, self._out(rows[0][0])

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        """Insert the row unless the key is present; exactly one of concurrent callers writes."""
        assert self._sql is not None
        stored = self._in(key, value)
        existing: Any = None
        try:
            async with self._session(write=True) as s:
                version = await self._begin(s)
                if self._my is not None:
                    # Under the version row's lock: no other dict writes in between.
                    found = await s.fetch(self._my.get_locked, self._scope(key))
                    if found and found[0][0] is not None:
                        existing = found[0][0]
                        raise _NothingWritten
                    await s.execute(self._my.upsert, self._scope(key, stored))
                    await self._log(s, version, {key: value})
                elif await s.fetch(self._sql.insert_new, self._scope(key, stored)):
                    await self._log(s, version, {key: value})
                else:
                    # Still under the lock: this is the value as of version - 1.
                    existing = (await s.fetch(self._sql.get, self._scope(key)))[0][0]
                    raise _NothingWritten
        except _NothingWritten:
            current = self._out(existing)
            return Delta(version=version - 1, changes={key: current}), current
        return await self._after(Delta(version=version, changes={key: value}, prev=version - 1)), value

    async def clear(self) -> Delta:
        """Delete every row of the dict in one transaction."""
        assert self._sql is not None
        try:
            async with self._session(write=True) as s:
                version = await self._begin(s)
                if self._my is not None:
                    rows = await s.fetch(self._my.select_locked, self._scope())
                else:
                    rows = await s.fetch(self._sql.clear, self._scope())
                if not rows:
                    raise _NothingWritten
                if self._my is not None:
                    await s.execute(self._my.delete_all, self._scope())
                removed: dict[str, bytes | None] = {row[0]: None for row in rows if row[1] is not None}
                await self._log(s, version, {row[0]: None for row in rows})
        except _NothingWritten:
            # Nothing to remove, and we held the lock: the dict was empty at version - 1.
            return Delta(version=version - 1, full=True)
        return await self._after(Delta(version=version, changes=removed, prev=version - 1))

    # -- the marker ------------------------------------------------------------------------------

    async def _raise_marker(
        self, version: int, *, known: tuple[int | None, int | None] | None = None
    ) -> None:
        if self._marker is None:
            return
        if not await self._marker.raise_to(max(version, self._owed), known=known):
            # Owed until memcached answers: the next poll or write pays it.
            self._owed = max(self._owed, version)
        else:
            self._owed = 0

    # -- push (PostgreSQL) -----------------------------------------------------------------------

    subscribe: Any  # set by start() on PostgreSQL only: SQLite has nothing to push

    def _subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Delta]]:
        return self._listen()

    @asynccontextmanager
    async def _listen(self) -> AsyncIterator[AsyncIterator[Delta]]:
        """LISTEN on a connection of its own (never one held out of the application's pool)."""
        # asyncpg ships no type information; it is there whenever a PostgreSQL client is.
        asyncpg: Any = importlib.import_module("asyncpg")
        client: Any = self._client()
        extra = {k: v for k, v in client.extra.items() if k not in _POOL_ONLY}
        settings = dict(client.server_settings)
        if client.schema:
            settings["search_path"] = client.schema
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        with map_exceptions(message="cannot listen for changes"):
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
            with map_exceptions(message="cannot listen for changes"):
                await conn.add_listener(
                    self._channel, lambda _c, _pid, _ch, payload: queue.put_nowait(payload)
                )
            yield self._notices(conn, queue)
        finally:
            try:
                async with asyncio.timeout(2):
                    await conn.close()
            except BaseException:
                conn.terminate()
                raise

    async def _notices(self, conn: Any, queue: asyncio.Queue[str | None]) -> AsyncIterator[Delta]:
        while True:
            try:
                async with asyncio.timeout(5.0):
                    payload = await queue.get()
            except TimeoutError:
                # Quiet for a while: make sure the connection is still there to hear anything.
                with map_exceptions(message="the LISTEN connection stopped answering"):
                    async with asyncio.timeout(2.0):
                        await conn.fetchval("SELECT 1")
                continue
            if payload is None:
                raise BackendError("the LISTEN connection closed")
            yield _notice(payload)


def _alias_of(model: type[Model], context: TortoiseContext) -> str | None:
    """The connection ``model`` uses in ``context``.

    Model metadata is shared by every context of the process, so it is trusted only when this
    context registered the model; an unregistered model (the ready table) uses the default connection.
    """
    apps = context.apps
    if apps is not None and any(m is model for m in apps.get_models_iterable()):
        return model._meta.default_connection
    return context.default_connection


async def _queue_rollback(session: _SqliteSession) -> None:
    """Never leave the application's connection inside our transaction, and never wait for it.

    aiosqlite runs statements in order in its thread. Cancelled while ``BEGIN IMMEDIATE`` still waits
    there for another process's lock, the BEGIN completes later; a ROLLBACK queued behind it undoes
    it then, before any statement queued after (the application's own included).
    """
    task = asyncio.ensure_future(session.execute("ROLLBACK", ()))
    # "No transaction is active" (the BEGIN failed) is the expected answer, not an error.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    # One turn of the loop: the task queues its ROLLBACK before anyone can take the connection.
    await asyncio.sleep(0)


@asynccontextmanager
async def _mysql_session(conn: Any, write: bool) -> AsyncIterator[_MysqlSession]:
    """A pool connection (in autocommit: every read sees every earlier commit); with ``write``, one
    READ COMMITTED transaction (no gap locks between dicts sharing a table)."""
    session = _MysqlSession(conn)
    try:
        if write:
            # For the next transaction only: the application's session settings stay as they are.
            await session.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", ())
            await conn.begin()
        yield session
        if write:
            await conn.commit()
    except _NothingWritten:
        try:
            await conn.rollback()
        except BaseException:
            conn.close()
            raise
        raise
    except BaseException:
        # A statement cut short leaves its reply unread, and a failed one its transaction open:
        # the pool must never hand this connection out again (it drops closed ones).
        conn.close()
        raise


def _row_alias(server: str) -> bool:
    """Whether the server takes ``INSERT … AS new`` (MySQL 8.0.19 and later; no MariaDB)."""
    if "mariadb" in server.lower():
        return False
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", server)
    return found is not None and tuple(int(n) for n in found.groups()) >= (8, 0, 19)


class _NothingWritten(Exception):
    """Raised inside a write transaction to roll it back: the write turned out to change nothing."""


def _payload_tail(changes: Mapping[str, bytes | None]) -> str:
    """The NOTIFY payload after its version: the values (base64) when they fit, else nothing."""
    body = {k: (None if v is None else base64.b64encode(v).decode("ascii")) for k, v in changes.items()}
    tail = ',"c":' + json.dumps(body, separators=(",", ":")) + "}"
    return tail if len(tail.encode("utf-8")) < NOTIFY_PAYLOAD_BYTES else "}"


def _payload(version: int, changes: Mapping[str, bytes | None]) -> str:
    """The NOTIFY payload: ``{"v": version, "c": {key: base64 or null}}``, or the version alone."""
    return '{"v":' + str(version) + _payload_tail(changes)


def _notice(payload: str) -> Delta:
    body = json.loads(payload)
    version = int(body["v"])
    if "c" not in body:
        return Delta(version=version, prev=version - 1, complete=False)
    changes = {k: (None if v is None else base64.b64decode(v)) for k, v in body["c"].items()}
    return Delta(version=version, changes=changes, prev=version - 1)


def _client_for_url(url: str) -> BaseDBAsyncClient:
    """A Tortoise client of the dict's own for ``sqlite:///file.db``, ``postgres://…`` or ``mysql://…``
    (no context)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if scheme == "sqlite":
        from tortoise.backends.sqlite.client import SqliteClient

        for name, value in options.items():
            # They become PRAGMA statements: keep them to plain words.
            if not re.fullmatch(r"[a-z_]+", name) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
                raise ValueError(f"bad SQLite option {name}={value!r}")
        path = unquote(parts.path)[1:]
        return SqliteClient(file_path=path, connection_name="aiodurabledict", **options)
    if scheme in {"postgres", "postgresql"}:
        from tortoise.backends.asyncpg.client import AsyncpgDBClient
        from tortoise.backends.base.config_generator import expand_db_url

        credentials = expand_db_url(url.replace(parts.scheme + "://", "postgres://", 1))["credentials"]
        return AsyncpgDBClient(connection_name="aiodurabledict", **credentials)
    if scheme == "mysql":
        from tortoise.backends.base.config_generator import expand_db_url
        from tortoise.backends.mysql.client import MySQLClient

        credentials = expand_db_url(url)["credentials"]
        return MySQLClient(connection_name="aiodurabledict", **credentials)
    raise ValueError(f"ModelDict opens sqlite://, postgres:// and mysql:// URLs, not {scheme}://")


class ModelDict(AsyncDurableDict[Any]):
    """A dict kept in the table of a Tortoise ``model``: one row per key.

    ``key_col`` names a unique string field, ``value_col`` a text or binary field. A model with a
    ``keyspace`` column (like the ready ``DurableEntry``) holds many dicts, one per ``keyspace=``;
    any other model holds one. ``cache`` is an ``aiomcache.Client`` that polls read instead of the
    database; give it to every dict that writes, or polls see their writes only at the next
    ``confirm_interval``. Tortoise must be initialised by the application (the dict never does it):
    build the dict where the application's Tortoise context is current. Backend options (see
    ``TortoiseBackend``) and the dict's own options are keyword arguments.

    Usage::

        async with ModelDict(Setting, cache=aiomcache.Client("127.0.0.1")) as settings:
            await settings.set("feature_x", True)
    """

    _BACKEND_OPTIONS = (
        "keyspace",
        "keyspace_col",
        "name",
        "cache_timeout",
        "confirm_interval",
        "log_keep",
        "marker_key",
        "connection",
        "context",
        "_owned_url",
    )

    def __init__(
        self,
        model: type[Model],
        *,
        key_col: str = "key",
        value_col: str = "value",
        cache: aiomcache.Client | None = None,
        **opts: Any,
    ) -> None:
        backend_opts = {k: opts.pop(k) for k in self._BACKEND_OPTIONS if k in opts}
        if model is DurableEntry:
            backend_opts.setdefault("keyspace_col", "keyspace")
        backend = TortoiseBackend(model, key_col=key_col, value_col=value_col, cache=cache, **backend_opts)
        super().__init__(backend, **opts)

    @property
    def backend(self) -> TortoiseBackend:
        """The backend, for its options and counters."""
        backend = self._backend
        assert isinstance(backend, TortoiseBackend)
        return backend


def open_url_dict(url: str, *, keyspace: str = DEFAULT_KEYSPACE, **opts: Any) -> ModelDict:
    """An unopened ``ModelDict`` on the ready ``DurableEntry`` table of ``sqlite:///file.db``,
    ``postgres://user@host:port/db`` or ``mysql://user@host:port/db``; it opens, and closes, a
    connection of its own."""
    _client_for_url(url)  # malformed URLs fail now, not at open()
    return ModelDict(DurableEntry, keyspace=keyspace, _owned_url=url, **opts)
