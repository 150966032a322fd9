"""What only the Tortoise store has: queries per sync, the version row and its log, model columns,
the application's Tortoise context, writers in other processes, the memcached marker, NOTIFY, and
MySQL's collations."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tortoise import fields
from tortoise.context import TortoiseContext
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aiodurabledict import AsyncDurableDict, BackendError, EncodeError, InvalidKeyError, RawCodec, open_dict
from aiodurabledict._backend import Delta
from aiodurabledict.backends.tortoise import ModelDict, TortoiseBackend, open_url_dict
from aiodurabledict.testing.conformance import eventually
from tests.notices import spy_notices
from tests.servers import host_port, require_memcached
from tests.stores.tortoise import (
    Setting,
    TextSetting,
    generate_schemas,
    mysql_database,
    postgres_schema,
    schema_url,
    tortoise_config,
    tortoise_store,
)

ROOT = Path(__file__).resolve().parents[2]


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
                await conn._execute(conn._conn.set_trace_callback, self.statements.append)
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
                conn._con.add_query_logger(log)


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


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test runs on a SQLite file, a PostgreSQL schema and a MySQL database of its own."""
    async with database(request.param, tmp_path) as url:
        yield url


@asynccontextmanager
async def app_context(db_url: str, *modules: str) -> AsyncIterator[TortoiseContext]:
    """An application's Tortoise context, initialised and current, as the application would have it."""
    ctx = TortoiseContext()
    async with ctx:
        await ctx.init(config=tortoise_config(db_url, *modules))
        await generate_schemas(ctx)
        yield ctx


def backend_of(d: AsyncDurableDict[Any]) -> TortoiseBackend:
    backend = d._backend
    assert isinstance(backend, TortoiseBackend)
    return backend


def client_of(d: AsyncDurableDict[Any]) -> Any:
    return backend_of(d)._client()


# -- queries, versions and the log ---------------------------------------------------------------


async def test_sync_after_one_change_takes_one_query(db_url: str) -> None:
    """After one remote write, sync() sends one SELECT (at most two), whatever the table's size."""
    async with (
        tortoise_store(db_url, model=Setting) as make,
        await make(watch=False) as reader,
        await make(watch=False) as writer,
    ):
        await writer.update({f"k{i}": i for i in range(500)})
        counter = Counter()
        await counter.attach(client_of(reader))
        await reader.sync()
        first = counter.count
        await writer.set("k7", "new")
        await reader.sync()
        assert reader["k7"] == "new"
        assert len(reader) == 500
        assert 1 <= counter.count - first <= 2
        before = counter.count
        assert await reader.sync() is False
        assert counter.count - before == 1, counter.statements[before:]


async def test_versions_are_dense_and_writes_return_their_delta(db_url: str) -> None:
    """Every commit raises the version by one; each write returns exactly what it wrote, prev = version - 1."""
    async with tortoise_store(db_url, model=Setting) as make, await make(watch=False) as d:
        b = backend_of(d)
        v0 = (await b.load()).version
        assert b.dense_versions
        assert await b.set("a", b"1") == Delta(version=v0 + 1, changes={"a": b"1"}, prev=v0)
        assert await b.update({"b": b"2", "c": b"3"}) == Delta(v0 + 2, {"b": b"2", "c": b"3"}, prev=v0 + 1)
        assert await b.pop("a") == (Delta(v0 + 3, {"a": None}, prev=v0 + 2), b"1")
        assert await b.pop("a") is None
        assert await b.setdefault("b", b"9") == (Delta(v0 + 3, {"b": b"2"}), b"2")
        assert await b.setdefault("n", b"9") == (Delta(v0 + 4, {"n": b"9"}, prev=v0 + 3), b"9")
        assert await b.clear() == Delta(v0 + 5, {"b": None, "c": None, "n": None}, prev=v0 + 4)
        assert await b.clear() == Delta(v0 + 5, full=True)
        assert (await b.load()).version == v0 + 5
        since = await b.changes_since(v0 + 1)
        assert since == Delta(v0 + 5, {"a": None, "b": None, "c": None, "n": None}, prev=v0 + 1)


async def test_log_is_trimmed_and_old_caches_reload_fully(db_url: str) -> None:
    """The change log keeps ``log_keep`` versions; a cache older than its horizon gets a full delta."""
    async with tortoise_store(db_url, model=Setting, log_keep=8) as make, await make(watch=False) as d:
        b = backend_of(d)
        for i in range(40):
            await d.set(f"k{i % 3}", i)
        placeholder = "?" if b._dialect == "sqlite" else "$1"
        q = "`" if b._dialect == "mysql" else '"'
        async with b._session() as s:
            rows = await s.fetch(
                f"SELECT COUNT(*) FROM {q}aiodurabledict_change{q} WHERE {q}name{q} = {placeholder}",
                [b._name],
            )
        assert int(rows[0][0]) <= 8 + b._trim_every
        old = await b.changes_since(1)
        assert old.full
        assert old.version == 40
        assert set(old.changes) == {"k0", "k1", "k2"}
        recent = await b.changes_since(38)
        assert not recent.full
        assert recent.prev == 38
        assert set(recent.changes) == {"k2", "k0"}


async def test_pop_of_a_missing_key_writes_nothing(db_url: str) -> None:
    """delete() of an absent key raises KeyError and leaves the version alone."""
    async with tortoise_store(db_url, model=Setting) as make, await make(watch=False) as d:
        await d.set("a", 1)
        version = (await backend_of(d).load()).version
        with pytest.raises(KeyError):
            await d.delete("missing")
        assert await d.pop("missing", "dflt") == "dflt"
        assert (await backend_of(d).load()).version == version


# -- model columns -------------------------------------------------------------------------------


async def test_text_value_column_holds_utf8_and_refuses_other_bytes(db_url: str) -> None:
    """A text value column keeps the JSON text; bytes that are not UTF-8 raise EncodeError, nothing written."""
    async with (
        tortoise_store(db_url, model=TextSetting) as make,
        await make(watch=False) as d,
        await make(watch=False, codec=RawCodec()) as raw,
    ):
        await d.set("greeting", {"text": "héllo"})
        async with app_context(db_url):
            row = await TextSetting.get(key="greeting")
        assert json.loads(row.value or "") == {"text": "héllo"}
        with pytest.raises(EncodeError):
            await raw.set("bin", b"\xff\xfe")
        assert "bin" not in await d.snapshot()


async def test_nul_characters(db_url: str) -> None:
    """SQLite and MySQL keep NUL in keys; PostgreSQL refuses NUL keys (InvalidKeyError) and NUL text
    (EncodeError)."""
    async with (
        tortoise_store(db_url, model=TextSetting) as make,
        await make(watch=False) as d,
        await make(watch=False, codec=RawCodec()) as raw,
    ):
        if backend_of(d)._dialect in {"sqlite", "mysql"}:
            await d.set("a\x00b", 1)
            await raw.set("nul", b'"x\x00y"')
            async with await make(watch=False, codec=RawCodec()) as fresh:
                assert fresh["a\x00b"] == b"1"
                assert fresh["nul"] == b'"x\x00y"'
        else:
            with pytest.raises(InvalidKeyError):
                await d.set("a\x00b", 1)
            with pytest.raises(EncodeError):
                await raw.set("nul", b'"x\x00y"')
            assert (await backend_of(d).load()).version == 0


def test_model_columns_are_checked() -> None:
    """The key must be a unique string column, the value text or binary; limits follow max_length."""

    class NotUnique(Model):
        key = fields.CharField(max_length=10)
        value = fields.TextField()

    class IntValue(Model):
        key = fields.CharField(max_length=10, unique=True)
        value = fields.IntField()

    with pytest.raises(ValueError, match="unique"):
        TortoiseBackend(NotUnique)
    with pytest.raises(TypeError, match="value column"):
        TortoiseBackend(IntValue)
    with pytest.raises(ValueError, match="no field"):
        TortoiseBackend(Setting, value_col="payload")
    assert TortoiseBackend(Setting).max_key_bytes == 255
    assert TortoiseBackend(Setting).max_value_bytes is None


async def test_ready_table_holds_one_dict_per_keyspace(db_url: str) -> None:
    """DurableEntry keeps several dicts apart by keyspace, each with its own version row."""
    async with (
        tortoise_store(db_url, keyspace="one") as one,
        tortoise_store(db_url, keyspace="two") as two,
        await one(watch=False) as a,
        await two(watch=False) as b,
    ):
        await a.set("k", "a")
        await b.set("k", "b")
        await b.set("only-b", 1)
        await a.clear()
        assert await b.snapshot() == {"k": "b", "only-b": 1}
        assert await a.snapshot() == {}
        assert a.version == 2
        assert b.version == 2


# -- the application's Tortoise context ----------------------------------------------------------


async def test_works_from_tasks_without_the_tortoise_context(db_url: str) -> None:
    """A dict built in the application's context serves (and watches) from tasks where no context is current."""

    async def elsewhere(d: ModelDict, other: ModelDict) -> None:
        # Plain Tortoise queries fail here: the context is not current in this task.
        with pytest.raises(RuntimeError, match="No TortoiseContext"):
            await Setting.all().count()
        async with d, other:
            await other.set("k", 1)
            await eventually(lambda: "k" in d.view)
            assert d["k"] == 1

    async with app_context(db_url):
        d = ModelDict(Setting, poll_interval=0.02)
        other = ModelDict(Setting, watch=False)
        await asyncio.create_task(elsewhere(d, other), context=contextvars.Context())


async def test_never_initialises_tortoise_nor_touches_the_model(db_url: str) -> None:
    """The application's own ORM queries keep working on the same model and connection after dicts ran."""
    async with app_context(db_url):
        before = (Setting._meta.default_connection, Setting._meta.db_table)
        async with ModelDict(Setting) as d:
            await d.set("k", "v")
        assert (Setting._meta.default_connection, Setting._meta.db_table) == before
        row = await Setting.get(key="k")
        assert row.value == b'"v"'
        await Setting.create(key="orm", value=b"1")
        assert await Setting.all().count() == 2


async def test_library_tables_from_the_users_apps(db_url: str) -> None:
    """With tortoise_models in the application's apps, its schema generation creates the tables the dict uses."""
    async with app_context(db_url, "aiodurabledict.backends.tortoise_models"):
        from aiodurabledict.backends.tortoise_models import DictVersion, DurableEntry

        async with ModelDict(DurableEntry, keyspace="apps") as d:
            await d.set("k", 1)
        row = await DictVersion.get(name="aiodurabledict_entry/apps")
        assert row.version == 1
        assert (await DurableEntry.get(keyspace="apps", key="k")).value == b"1"


@pytest.mark.parametrize(
    "kind",
    [pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)],
)
async def test_write_outside_an_application_transaction(kind: str, tmp_path: Path) -> None:
    """On PostgreSQL and MySQL a dict written inside an application transaction commits on its own.

    (SQLite has one connection: there a dict shares, and waits for, the application's transaction.)
    """

    async def abandoned_transaction(d: ModelDict) -> None:
        async with in_transaction():
            await Setting.create(key="app", value=b"1")
            await d.set("dict", 1)
            raise ZeroDivisionError

    # A pool of more than one connection: the application's transaction holds one.
    async with (
        database(kind, tmp_path) as db_url,
        app_context(pooled(db_url)),
        ModelDict(Setting, watch=False) as d,
    ):
        with pytest.raises(ZeroDivisionError):
            await abandoned_transaction(d)
        assert await Setting.filter(key="app").count() == 0
        assert (await Setting.get(key="dict")).value == b"1"


async def test_sqlite_refuses_use_inside_an_application_transaction(tmp_path: Path) -> None:
    """On SQLite a dict used inside an open transaction of the same task fails at once instead of waiting."""
    async with app_context(f"sqlite://{tmp_path / 'db.sqlite'}"), ModelDict(Setting, watch=False) as d:
        async with in_transaction():
            with pytest.raises(BackendError, match="transaction"):
                await d.set("k", 1)
        await d.set("k", 2)
        assert (await Setting.get(key="k")).value == b"2"


# -- open_dict URLs ------------------------------------------------------------------------------


async def test_open_url_dict_owns_its_connection(db_url: str, tmp_path: Path) -> None:
    """open_url_dict builds a client of its own on the ready table, and closes it."""
    url = f"sqlite:///{tmp_path / 'own.db'}" if db_url.startswith("sqlite") else pooled(db_url)
    async with open_url_dict(url, keyspace="u") as d:
        await d.set("k", [1])
        owned = backend_of(d)._owned
        assert owned is not None
    assert backend_of(d)._owned is None
    async with open_url_dict(url, keyspace="u", watch=False) as again:
        assert again["k"] == [1]


# -- other processes -----------------------------------------------------------------------------

WORKER = """
import asyncio, sys
from tortoise.context import TortoiseContext
from aiodurabledict.backends.tortoise import ModelDict
from tests.stores.tortoise import MODELS_MODULE, Setting

async def main(url, n, writes):
    ctx = TortoiseContext()
    with ctx:
        await ctx.init(db_url=url, modules={"models": [MODELS_MODULE]})
        d = ModelDict(Setting, watch=False, timeout=30)
    try:
        async with d:
            sys.stdin.readline()  # start together
            won = await d.setdefault("once", n)
            for i in range(writes):
                await d.set(f"w{n}/{i}", i)
                await d.set("shared", [n, i])
            print(won, flush=True)
    finally:
        await ctx.close_connections()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


async def test_writers_in_eight_processes(db_url: str) -> None:
    """8 processes race: setdefault has one winner, every write lands, the version counts every commit."""
    url = pooled(db_url)
    writes = 15
    async with tortoise_store(url, model=Setting) as make, await make(watch=False) as d:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                url,
                str(n),
                str(writes),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            for n in range(8)
        ]
        await asyncio.sleep(1.0)
        outputs = await asyncio.gather(*(p.communicate(b"go\n") for p in procs))
        assert [p.returncode for p in procs] == [0] * 8
        winners = {out.decode().strip() for out, _ in outputs}
        assert len(winners) == 1
        content = await d.snapshot()
        assert content["once"] == int(winners.pop())
        assert all(content[f"w{n}/{i}"] == i for n in range(8) for i in range(writes))
        assert d.version == 1 + 8 * writes * 2


# -- the memcached marker ------------------------------------------------------------------------


@pytest.fixture
def memcached() -> tuple[str, int]:
    return host_port(require_memcached(), 11211)


@pytest.mark.memcached
async def test_unchanged_poll_reads_only_the_marker(db_url: str, memcached: tuple[str, int]) -> None:
    """With memcached, a poll that finds the marker at the cache's version sends no query at all."""
    import aiomcache

    async with AsyncExitStack() as stack:
        mc = aiomcache.Client(*memcached)
        stack.push_async_callback(mc.close)
        make = await stack.enter_async_context(tortoise_store(db_url, model=Setting, memcached=None))
        d = await stack.enter_async_context(await make(watch=False, cache=mc))
        w = await stack.enter_async_context(await make(watch=False, cache=mc))
        await w.set("k", 1)
        counter = Counter()
        await counter.attach(client_of(d))
        await d.sync()  # first poll confirms against the database
        before = counter.count
        for _ in range(5):
            assert await d.sync() is False
        assert counter.count == before
        marker = backend_of(d)._marker
        assert marker is not None
        assert await mc.get(marker.key) == str(d.version).encode()
        await w.set("k", 2)
        assert await d.sync() is True
        assert d["k"] == 2
        assert counter.count - before == 1


@pytest.mark.memcached
async def test_marker_behind_missing_or_ahead_is_repaired(db_url: str, memcached: tuple[str, int]) -> None:
    """Missing, behind or ahead of the database, the marker is set back to the database's version."""
    import aiomcache

    async with AsyncExitStack() as stack:
        mc = aiomcache.Client(*memcached)
        stack.push_async_callback(mc.close)
        make = await stack.enter_async_context(tortoise_store(db_url, model=Setting))
        d = await stack.enter_async_context(await make(watch=False, cache=mc, confirm_interval=3600))
        await d.set("a", 1)
        await d.set("b", 2)
        marker = backend_of(d)._marker
        assert marker is not None
        key = marker.key
        for wrong in (None, b"1", b"99", b"garbage"):
            if wrong is None:
                await mc.delete(key)
            else:
                await mc.set(key, wrong)
            await backend_of(d).changes_since(d.version)
            assert await mc.get(key) == b"2", wrong


@pytest.mark.memcached
async def test_write_that_never_reached_the_marker_is_found_by_the_confirm(
    db_url: str, memcached: tuple[str, int]
) -> None:
    """A commit whose writer never raised the marker (it died, or had no memcached) is still found:
    a poll asks the database once ``confirm_interval`` has passed."""
    import aiomcache

    async with AsyncExitStack() as stack:
        mc = aiomcache.Client(*memcached)
        stack.push_async_callback(mc.close)
        make = await stack.enter_async_context(tortoise_store(db_url, model=Setting))
        reader = await stack.enter_async_context(
            await make(cache=mc, confirm_interval=0.3, poll_interval=0.02, heartbeat=0.05)
        )
        marked = await stack.enter_async_context(await make(watch=False, cache=mc))
        unmarked = await stack.enter_async_context(await make(watch=False))
        # Nor any NOTIFY (on PostgreSQL): only the polls and heartbeats are left to find it.
        backend_of(unmarked)._publish = False
        await marked.set("k", 1)
        await eventually(lambda: reader.view.get("k") == 1)
        await unmarked.set("k", 2)
        await eventually(lambda: reader.view.get("k") == 2, within=5)
        marker = backend_of(reader)._marker
        assert marker is not None
        assert await mc.get(marker.key) == b"2"


# -- NOTIFY --------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_notify_carries_values_or_just_the_version(tmp_path: Path) -> None:
    """Small writes arrive with their values; large ones as a version-only notice that the dict fetches."""
    async with (
        database("postgres", tmp_path) as url,
        tortoise_store(url, model=Setting, heartbeat=30) as make,
        await make() as reader,
        await make(watch=False) as writer,
    ):
        assert hasattr(backend_of(reader), "subscribe")
        seen = spy_notices(reader)
        await writer.set("small", 1)
        await writer.set("big", "x" * 20_000)
        await eventually(lambda: "big" in reader.view)
        assert reader["big"] == "x" * 20_000
        assert [(n.version, n.complete) for n in seen] == [(1, True), (2, False)]
        assert seen[0].changes == {"small": b"1"}


async def test_sqlite_has_no_push(tmp_path: Path) -> None:
    """SQLite cannot push: the backend has no subscribe(), so the dict polls at poll_interval."""
    async with tortoise_store(f"sqlite://{tmp_path / 'x.db'}", model=Setting) as make, await make() as d:
        assert not hasattr(backend_of(d), "subscribe")
        assert backend_of(d).poll_interval == 1.0


# -- MySQL ---------------------------------------------------------------------------------------


@pytest.fixture
async def mysql_url() -> AsyncIterator[str]:
    async with mysql_database() as url:
        yield url


@pytest.mark.mysql
async def test_mysql_polls_and_keeps_keys_apart_exactly(mysql_url: str) -> None:
    """MySQL has no push (the dict polls); keys that differ in case, accents or trailing NULs are
    different keys, and a key ending in a space (equal to one without under PAD SPACE) is refused."""
    async with (
        tortoise_store(mysql_url, model=Setting) as make,
        await make(poll_interval=0.02) as reader,
        await make(watch=False) as writer,
    ):
        assert not hasattr(backend_of(reader), "subscribe")
        keys = ["a", "A", "á", "a\x00"]
        for n, key in enumerate(keys):
            await writer.set(key, n)
        await eventually(lambda: len(reader.view) == 4)
        assert {key: reader[key] for key in keys} == {key: n for n, key in enumerate(keys)}
        with pytest.raises(InvalidKeyError):
            await writer.set("a ", 1)
        await writer.delete("A")
        await eventually(lambda: "A" not in reader.view)
        assert reader["a"] == 0


@pytest.mark.mysql
async def test_mysql_refuses_a_case_insensitive_key_column(mysql_url: str) -> None:
    """A key column whose collation merges "a" and "A" (what Tortoise generates) is refused at open,
    with the ALTER TABLE that fixes it."""
    async with app_context(mysql_url) as ctx:
        client: Any = ctx.connections.get("mysql")
        await client.execute_script(
            "ALTER TABLE `app_setting` MODIFY `key` VARCHAR(255) CHARACTER SET utf8mb4 "
            "COLLATE utf8mb4_general_ci NOT NULL"
        )
        with pytest.raises(BackendError, match="ALTER TABLE `app_setting` MODIFY `key`"):
            async with ModelDict(Setting):
                pass


@pytest.mark.mysql
async def test_open_dict_mysql_url(mysql_url: str) -> None:
    """open_dict("mysql://…?keyspace=…") makes a dict on the ready table, created with binary keys."""
    url = f"{mysql_url}?keyspace=urls&poll_interval=0.02"
    async with open_dict(url) as writer, open_dict(url) as reader:
        await writer.set("k", {"a": 1})
        await writer.set("K", 2)
        await eventually(lambda: len(reader.view) == 2)
        assert reader["k"] == {"a": 1}
        assert reader["K"] == 2
        assert backend_of(reader)._dialect == "mysql"
