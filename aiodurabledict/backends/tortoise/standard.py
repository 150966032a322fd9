"""The SQL that SQLite and PostgreSQL both speak: double-quoted names, ``ON CONFLICT``, ``RETURNING``."""

# ruff: noqa: S608 - identifiers come from model metadata and are quoted; values are always parameters.
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .columns import Columns, quote
from .dialect import Dialect, Session, Statements
from .models import CHANGE_TABLE, ENTRY_KEY_LENGTH, ENTRY_TABLE, VERSION_TABLE

__all__ = ["StandardDialect", "StandardStatements", "library_ddl"]


class StandardStatements(Statements):
    """The statements of one dict, with ``$n`` parameters."""

    def __init__(self, cols: Columns) -> None:
        t = (quote(cols.schema) + "." if cols.schema else "") + quote(cols.table)
        k, v, ver, chg = quote(cols.key), quote(cols.value), quote(VERSION_TABLE), quote(CHANGE_TABLE)
        ks = quote(cols.keyspace) if cols.keyspace else None
        self.table, self.k, self.v, self.ks = t, k, v, ks
        self.conflict = ", ".join([ks, k] if ks else [k])

        def scoped(n: int, joiner: str = " AND ") -> str:
            return f"{joiner}t.{ks} = ${n}" if ks else ""

        self.cols_in = f"{k}, {v}, {ks}" if ks else f"{k}, {v}"
        vals_in = "$1, $2, $3" if ks else "$1, $2"
        self.ensure_version = f'INSERT INTO {ver} ("name", "version", "horizon") VALUES ($1, 0, 0) ON CONFLICT ("name") DO NOTHING'
        self.load = (
            f'SELECT v."version", t.{k}, t.{v} FROM {ver} v '
            f'LEFT JOIN {t} t ON {scoped(2, "") or "TRUE"} WHERE v."name" = $1'
        )
        # The value comes from a correlated subquery: one index lookup per changed key, whatever the
        # planner believes about the table's size (a join may be planned as a scan of the whole dict).
        self.since = (
            f'SELECT v."version", v."horizon", c."key", (SELECT t.{v} FROM {t} t WHERE t.{k} = c."key"{scoped(3)}) '
            f'FROM {ver} v LEFT JOIN (SELECT DISTINCT "key" FROM {chg} WHERE "name" = $1 AND "version" > $2) c '
            'ON TRUE WHERE v."name" = $1'
        )
        self.bump = f'UPDATE {ver} SET "version" = "version" + 1 WHERE "name" = $1 RETURNING "version"'
        self.upsert = (
            f"INSERT INTO {t} ({self.cols_in}) VALUES ({vals_in}) "
            f"ON CONFLICT ({self.conflict}) DO UPDATE SET {v} = excluded.{v}"
        )
        # A row whose value is NULL counts as absent everywhere, so setdefault may fill it.
        self.insert_new = (
            f"INSERT INTO {t} AS t ({self.cols_in}) VALUES ({vals_in}) "
            f"ON CONFLICT ({self.conflict}) DO UPDATE SET {v} = excluded.{v} WHERE t.{v} IS NULL RETURNING {k}"
        )
        self.get = f"SELECT t.{v} FROM {t} t WHERE t.{k} = $1{scoped(2)}"
        self.delete = f"DELETE FROM {t} AS t WHERE t.{k} = $1{scoped(2)} RETURNING {v}"
        self.clear = f"DELETE FROM {t} AS t{scoped(1, ' WHERE ')} RETURNING {k}, {v}"
        self.log = f'INSERT INTO {chg} ("name", "version", "key") VALUES ($1, $2, $3)'
        self.trim = f'DELETE FROM {chg} WHERE "name" = $1 AND "version" <= $2'
        self.horizon = f'UPDATE {ver} SET "horizon" = $2 WHERE "name" = $1 AND "horizon" < $2'


class StandardDialect(Dialect):
    """The writes SQLite and PostgreSQL share: deletes and inserts that say what they found."""

    @property
    def sql(self) -> StandardStatements:
        raise NotImplementedError

    async def take(self, s: Session, key: str) -> Any:
        rows = await s.fetch(self.sql.delete, self.scope(key))
        return rows[0][0] if rows else None

    async def take_all(self, s: Session) -> list[Sequence[Any]]:
        return await s.fetch(self.sql.clear, self.scope())

    async def insert_new(self, s: Session, key: str, stored: Any) -> Any:
        if await s.fetch(self.sql.insert_new, self.scope(key, stored)):
            return None
        # Still under the lock: this is the value as of the version before this write.
        return (await s.fetch(self.sql.get, self.scope(key)))[0][0]


def library_ddl(*, serial: str, blob: str, with_entry: bool) -> list[str]:
    """The library's tables, as Tortoise generates them from ``models``."""
    statements = [
        (
            f'CREATE TABLE IF NOT EXISTS "{VERSION_TABLE}" ("name" VARCHAR(255) NOT NULL PRIMARY KEY, '
            '"version" BIGINT NOT NULL, "horizon" BIGINT NOT NULL)'
        ),
        (
            f'CREATE TABLE IF NOT EXISTS "{CHANGE_TABLE}" ("id" {serial}, "name" VARCHAR(255) NOT NULL, '
            '"version" BIGINT NOT NULL, "key" TEXT NOT NULL)'
        ),
        f'CREATE INDEX IF NOT EXISTS "aiodurabledict_change_name_version" ON "{CHANGE_TABLE}" ("name", "version")',
    ]
    if with_entry:
        statements.append(
            f'CREATE TABLE IF NOT EXISTS "{ENTRY_TABLE}" ("id" {serial}, "keyspace" VARCHAR(255) NOT NULL, '
            f'"key" VARCHAR({ENTRY_KEY_LENGTH}) NOT NULL, "value" {blob} NOT NULL, '
            'CONSTRAINT "uid_aiodurabled_keyspac_200fe1" UNIQUE ("keyspace", "key"))'
        )
    return statements
