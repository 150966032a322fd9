"""The SQL that SQLite and PostgreSQL both speak: double-quoted names, ``ON CONFLICT``, ``RETURNING``."""

# ruff: noqa: S608 - identifiers come from model metadata and are quoted; values are always parameters.
from __future__ import annotations

from .columns import Columns, quote
from .dialect import Statements
from .models import CHANGE_TABLE, ENTRY_KEY_LENGTH, ENTRY_TABLE, VERSION_TABLE

__all__ = ["NEW_COLUMNS", "StandardStatements", "library_ddl"]


class StandardStatements(Statements):
    """The statements of one dict, with ``$n`` parameters; ``lock`` takes the row lock with ``FOR UPDATE``
    (SQLite, where ``BEGIN IMMEDIATE`` already holds the database's write lock, drops it)."""

    def __init__(self, cols: Columns) -> None:
        t = (quote(cols.schema) + "." if cols.schema else "") + quote(cols.table)
        k, v, ver, chg = quote(cols.key), quote(cols.value), quote(VERSION_TABLE), quote(CHANGE_TABLE)
        ks = quote(cols.keyspace) if cols.keyspace else None
        #: The table (schema-qualified where it has one), and the key, value and keyspace columns, quoted.
        self.table: str = t
        self.k: str = k
        self.v: str = v
        self.ks: str | None = ks
        #: The columns of the upsert's ON CONFLICT (the keyspace's too where the table holds many dicts).
        self.conflict: str = ", ".join([ks, k] if ks else [k])

        def scoped(n: int, joiner: str = " AND ") -> str:
            return f"{joiner}t.{ks} = ${n}" if ks else ""

        self.cols_in: str = f"{k}, {v}, {ks}" if ks else f"{k}, {v}"
        vals_in = "$1, $2, $3" if ks else "$1, $2"
        self.ensure_version: str = (
            f'INSERT INTO {ver} ("name", "version", "horizon", "store", "secret") VALUES ($1, 0, 0, $2, $3) '
            'ON CONFLICT ("name") DO NOTHING'
        )
        self.fill_identity: str = (
            f'UPDATE {ver} SET "store" = COALESCE("store", $2), "secret" = COALESCE("secret", $3) '
            'WHERE "name" = $1'
        )
        self.identity: str = f'SELECT "store", "secret" FROM {ver} WHERE "name" = $1'
        self.load: str = (
            f'SELECT v."version", v."token", t.{k}, t.{v} FROM {ver} v '
            f'LEFT JOIN {t} t ON {scoped(2, "") or "TRUE"} WHERE v."name" = $1'
        )
        # The value comes from a correlated subquery: one index lookup per changed key, whatever the
        # planner believes about the table's size (a join may be planned as a scan of the whole dict).
        self.since: str = (
            f'SELECT v."version", v."horizon", v."token", '
            f'(SELECT a."token" FROM {chg} a WHERE a."name" = $1 AND a."version" = $2 LIMIT 1), '
            f'c."key", (SELECT t.{v} FROM {t} t WHERE t.{k} = c."key"{scoped(3)}) '
            f'FROM {ver} v LEFT JOIN (SELECT DISTINCT "key" FROM {chg} WHERE "name" = $1 AND "version" > $2) c '
            'ON TRUE WHERE v."name" = $1'
        )
        self.lock: str = f'SELECT "version", "token" FROM {ver} WHERE "name" = $1 FOR UPDATE'
        self.commit: str = f'UPDATE {ver} SET "version" = $2, "token" = $3 WHERE "name" = $1'
        self.upsert: str = (
            f"INSERT INTO {t} ({self.cols_in}) VALUES ({vals_in}) "
            f"ON CONFLICT ({self.conflict}) DO UPDATE SET {v} = excluded.{v}"
        )
        self.get: str = f"SELECT t.{v} FROM {t} t WHERE t.{k} = $1{scoped(2)}"
        self.delete: str = f"DELETE FROM {t} AS t WHERE t.{k} = $1{scoped(2)}"
        self.select_all: str = f"SELECT t.{k}, t.{v} FROM {t} t{scoped(1, ' WHERE ')}"
        self.delete_all: str = f"DELETE FROM {t} AS t{scoped(1, ' WHERE ')}"
        self.log: str = f'INSERT INTO {chg} ("name", "version", "key", "token") VALUES ($1, $2, $3, $4)'
        self.trim: str = f'DELETE FROM {chg} WHERE "name" = $1 AND "version" < $2'
        self.horizon: str = f'UPDATE {ver} SET "horizon" = $2 WHERE "name" = $1 AND "horizon" < $2'
        self.forget_log: str = f'DELETE FROM {chg} WHERE "name" = $1'
        self.forget_version: str = f'DELETE FROM {ver} WHERE "name" = $1'


def library_ddl(*, serial: str, blob: str, with_entry: bool) -> list[str]:
    """The library's tables, as Tortoise generates them from ``models``."""
    statements = [
        (
            f'CREATE TABLE IF NOT EXISTS "{VERSION_TABLE}" ("name" VARCHAR(255) NOT NULL PRIMARY KEY, '
            '"version" BIGINT NOT NULL, "horizon" BIGINT NOT NULL, '
            '"token" VARCHAR(32), "store" VARCHAR(32), "secret" VARCHAR(64))'
        ),
        (
            f'CREATE TABLE IF NOT EXISTS "{CHANGE_TABLE}" ("id" {serial}, "name" VARCHAR(255) NOT NULL, '
            '"version" BIGINT NOT NULL, "key" TEXT NOT NULL, "token" VARCHAR(32))'
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


#: The columns the previous release's tables lack, with their types: added in place at ``start()``.
NEW_COLUMNS: dict[str, dict[str, str]] = {
    VERSION_TABLE: {"token": "VARCHAR(32)", "store": "VARCHAR(32)", "secret": "VARCHAR(64)"},
    CHANGE_TABLE: {"token": "VARCHAR(32)"},
}
