"""The Tortoise store's history: tables of the previous release migrated in place, a restored backup
followed by every cache, and the drivers' failures reported as BackendError."""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import pytest

from aiodurabledict import AsyncDurableDict, Backend, BackendError
from aiodurabledict.backends.tortoise import ModelDict
from aiodurabledict.backends.tortoise_models import DurableEntry
from aiodurabledict.testing.conformance import eventually
from tests.backends.tortoise_kit import (
    DIALECTS,
    app_context,
    backend_of,
    database,
    entries,
    execute,
    table_content,
)
from tests.servers import require_memcached
from tests.stores.tortoise import tortoise_store


@pytest.fixture(params=DIALECTS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test runs on a SQLite file, a PostgreSQL schema and a MySQL database of its own."""
    async with database(request.param, tmp_path) as url:
        yield url


# The previous release's tables, as it created them.
_OLD_TABLES = {
    "sqlite": [
        (
            'CREATE TABLE "aiodurabledict_version" ("name" VARCHAR(255) NOT NULL PRIMARY KEY, '
            '"version" BIGINT NOT NULL, "horizon" BIGINT NOT NULL)'
        ),
        (
            'CREATE TABLE "aiodurabledict_change" ("id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
            '"name" VARCHAR(255) NOT NULL, "version" BIGINT NOT NULL, "key" TEXT NOT NULL)'
        ),
        (
            'CREATE TABLE "aiodurabledict_entry" ("id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
            '"keyspace" VARCHAR(255) NOT NULL, "key" VARCHAR(512) NOT NULL, "value" BLOB NOT NULL, '
            'CONSTRAINT "uid_aiodurabled_keyspac_200fe1" UNIQUE ("keyspace", "key"))'
        ),
    ],
    "postgres": [
        (
            'CREATE TABLE "aiodurabledict_version" ("name" VARCHAR(255) NOT NULL PRIMARY KEY, '
            '"version" BIGINT NOT NULL, "horizon" BIGINT NOT NULL)'
        ),
        (
            'CREATE TABLE "aiodurabledict_change" ("id" BIGSERIAL NOT NULL PRIMARY KEY, '
            '"name" VARCHAR(255) NOT NULL, "version" BIGINT NOT NULL, "key" TEXT NOT NULL)'
        ),
        (
            'CREATE TABLE "aiodurabledict_entry" ("id" BIGSERIAL NOT NULL PRIMARY KEY, '
            '"keyspace" VARCHAR(255) NOT NULL, "key" VARCHAR(512) NOT NULL, "value" BYTEA NOT NULL, '
            'CONSTRAINT "uid_aiodurabled_keyspac_200fe1" UNIQUE ("keyspace", "key"))'
        ),
    ],
    "mysql": [
        (
            "CREATE TABLE `aiodurabledict_version` (`name` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin "
            "NOT NULL PRIMARY KEY, `version` BIGINT NOT NULL, `horizon` BIGINT NOT NULL) ENGINE=InnoDB"
        ),
        (
            "CREATE TABLE `aiodurabledict_change` (`id` BIGINT NOT NULL PRIMARY KEY AUTO_INCREMENT, "
            "`name` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, `version` BIGINT NOT NULL, "
            "`key` LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, "
            "KEY `aiodurabledict_change_name_version` (`name`, `version`)) ENGINE=InnoDB"
        ),
        (
            "CREATE TABLE `aiodurabledict_entry` (`id` BIGINT NOT NULL PRIMARY KEY AUTO_INCREMENT, "
            "`keyspace` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, "
            "`key` VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, `value` LONGBLOB NOT NULL, "
            "UNIQUE KEY `uid_aiodurabled_keyspac_200fe1` (`keyspace`, `key`)) ENGINE=InnoDB"
        ),
    ],
}


def _kind(url: str) -> str:
    return url.split(":", 1)[0]


async def test_previous_release_tables_are_migrated_in_place(db_url: str) -> None:
    """Tables made by the previous release (no tokens, no identity) get their new columns when dicts
    open, four at once as four processes would: the content and version stay, every opener sees one
    identity, and writes go on with tokens."""
    kind = _kind(db_url)
    q = "`" if kind == "mysql" else '"'
    async with app_context(db_url) as ctx:
        client: Any = ctx.connections.get(kind)
        for statement in _OLD_TABLES[kind]:
            await client.execute_script(statement)
        rows = [
            f"INSERT INTO {q}aiodurabledict_version{q} VALUES ('aiodurabledict_entry/old', 2, 0)",
            (
                f"INSERT INTO {q}aiodurabledict_change{q} ({q}name{q}, {q}version{q}, {q}key{q}) "
                "VALUES ('aiodurabledict_entry/old', 1, 'a'), ('aiodurabledict_entry/old', 2, 'b')"
            ),
            f"INSERT INTO {q}aiodurabledict_entry{q} ({q}keyspace{q}, {q}key{q}, {q}value{q}) "
            # Bytes: SQLite keeps a quoted string as text even in a BLOB column.
            + (
                "VALUES ('old', 'a', X'31'), ('old', 'b', X'5b325d')"
                if kind == "sqlite"
                else "VALUES ('old', 'a', '1'), ('old', 'b', '[2]')"
            ),
        ]
        for statement in rows:
            await client.execute_script(statement)
    async with tortoise_store(db_url, keyspace="old") as make, AsyncExitStack() as stack:
        dicts = [await make(watch=False) for _ in range(4)]
        await asyncio.gather(*(stack.enter_async_context(d) for d in dicts))
        assert all(d == {"a": 1, "b": [2]} and d.version == 2 for d in dicts)
        identities = {backend_of(d).identity for d in dicts}
        assert len(identities) == 1
        assert None not in identities
        await dicts[0].set("c", 3)
        await dicts[1].sync()
        assert dicts[1] == {"a": 1, "b": [2], "c": 3}
        since = await backend_of(dicts[2]).changes_since(2)
        # The token at version 2 predates tokens: the version alone is trusted there.
        assert (since.version, since.prev_token) == (3, None)
        assert since.token is not None
        tokens = await table_content(
            dicts[0], 'SELECT "token" FROM "aiodurabledict_change" WHERE "version" = $1', 3
        )
        assert tokens == [(since.token,)]


async def _copy(d: AsyncDurableDict[Any]) -> list[tuple[str, list[Any]]]:
    """The dict's rows, as a backup holds them: statements that put them back."""
    name = backend_of(d).name
    version = await table_content(
        d,
        'SELECT "name", "version", "horizon", "token", "store", "secret" FROM "aiodurabledict_version" '
        'WHERE "name" = $1',
        name,
    )
    log = await table_content(
        d, 'SELECT "name", "version", "key", "token" FROM "aiodurabledict_change" WHERE "name" = $1', name
    )
    keyspace = backend_of(d).dialect.keyspace
    data = await table_content(
        d, 'SELECT "keyspace", "key", "value" FROM "aiodurabledict_entry" WHERE "keyspace" = $1', keyspace
    )
    return [
        ('DELETE FROM "aiodurabledict_version" WHERE "name" = $1', [name]),
        ('DELETE FROM "aiodurabledict_change" WHERE "name" = $1', [name]),
        ('DELETE FROM "aiodurabledict_entry" WHERE "keyspace" = $1', [keyspace]),
        *[
            (
                (
                    'INSERT INTO "aiodurabledict_version" ("name", "version", "horizon", "token", "store", "secret") '
                    "VALUES ($1, $2, $3, $4, $5, $6)"
                ),
                list(row),
            )
            for row in version
        ],
        *[
            (
                'INSERT INTO "aiodurabledict_change" ("name", "version", "key", "token") VALUES ($1, $2, $3, $4)',
                list(row),
            )
            for row in log
        ],
        *[
            ('INSERT INTO "aiodurabledict_entry" ("keyspace", "key", "value") VALUES ($1, $2, $3)', list(row))
            for row in data
        ],
    ]


@pytest.mark.parametrize(
    "marked", [False, pytest.param(True, marks=pytest.mark.memcached)], ids=["plain", "memcached"]
)
async def test_a_restored_backup_is_followed_by_every_dict(db_url: str, marked: bool) -> None:
    """The dict's rows are copied, more is written, the copy is restored, and new writes pass the
    caches' version: the history the caches followed is gone, the versions are reused, and every
    dict (watching, manual, the writer of the lost writes) ends equal to the table."""
    memcached = require_memcached() if marked else None
    async with (
        tortoise_store(db_url, keyspace="restored", memcached=memcached, confirm_interval=3600) as make,
        await make(heartbeat=0.2, poll_interval=0.05) as watching,
        await make(watch=False) as manual,
        await make(watch=False) as writer,
    ):
        await writer.update(a=1)
        backup = await _copy(writer)
        for i in range(5):
            await writer.set(f"lost{i}", i)
        await manual.sync()
        await eventually(lambda: "lost4" in watching)
        lost_at = watching.version

        await execute(writer, *backup)
        async with await make(watch=False) as other:
            for i in range(8):
                await other.set(f"new{i}", i)
            assert other.version > lost_at
        table = await entries(writer)
        assert table == {"a": 1, **{f"new{i}": i for i in range(8)}}
        await eventually(lambda: watching == table, within=10)
        assert await manual.sync() is True
        assert manual == table
        assert manual.version == watching.version == other.version
        # The dict that made the lost writes follows too, from its next write.
        await writer.set("after", 1)
        assert writer == {**table, "after": 1}


async def test_a_restore_that_reuses_the_readers_version_is_not_taken_for_nothing_changed(
    db_url: str,
) -> None:
    """With the memcached marker, a restored store whose new history reaches exactly the reader's
    version again (another token) is not "nothing changed": the marker carries the token."""
    memcached = require_memcached()
    async with (
        tortoise_store(db_url, keyspace="again", memcached=memcached, confirm_interval=3600) as make,
        await make(watch=False) as reader,
        await make(watch=False) as writer,
    ):
        await writer.set("a", 1)
        backup = await _copy(writer)
        await writer.set("b", "lost")
        await reader.sync()
        assert reader == {"a": 1, "b": "lost"}
        await execute(writer, *backup)
        async with await make(watch=False) as other:
            await other.set("b", "new")
            assert other.version == reader.version
        assert await reader.sync() is True
        assert reader == {"a": 1, "b": "new"}


def _driver_error(kind: str) -> type[BaseException]:
    if kind == "sqlite":
        return sqlite3.Error
    module, name = ("asyncpg", "PostgresError") if kind == "postgres" else ("asyncmy.errors", "MySQLError")
    error: type[BaseException] = getattr(importlib.import_module(module), name)
    return error


async def test_driver_failures_are_backend_errors(db_url: str) -> None:
    """A statement the database refuses (its table was dropped under the dict) is a BackendError
    whose cause is the driver's own error; the cache keeps its values."""
    kind = _kind(db_url)
    async with app_context(db_url), ModelDict(DurableEntry, keyspace="gone", watch=False) as d:
        await d.set("k", 1)
        q = "`" if kind == "mysql" else '"'
        await backend_of(d).client().execute_script(f"DROP TABLE {q}aiodurabledict_entry{q}")
        with pytest.raises(BackendError) as info:
            await d.set("k", 2)
        assert isinstance(info.value.__cause__, _driver_error(kind))
        assert d["k"] == 1


class _GatedPop:
    """The backend of a dict whose pop reads the store at once and answers when ``gate`` opens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.read = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def pop(self, key: str) -> Any:
        answer = await self.inner.pop(key)
        self.read.set()
        await self.gate.wait()
        return answer


async def test_an_absent_pop_racing_a_set_never_hides_the_key(db_url: str) -> None:
    """A pops k and finds it absent; B sets k; A's cache takes B's write; then A's late answer
    arrives. It is a reading at the version the store answered at, so it cannot remove the newer k."""
    async with tortoise_store(db_url, keyspace="race", heartbeat=60, poll_interval=0.02) as make:
        model_dict = await make()
        gated = _GatedPop(model_dict.backend)
        async with (
            AsyncDurableDict[Any](cast(Backend, gated), heartbeat=60, poll_interval=0.02) as a,
            await make(watch=False) as b,
        ):
            await eventually(lambda: a.status.connected)
            popping = asyncio.create_task(a.pop("k", None))
            await gated.read.wait()
            await b.set("k", 1)
            await eventually(lambda: "k" in a)
            gated.gate.set()
            assert await popping is None
            assert a["k"] == 1
            await a.sync()
            assert a == {"k": 1}
