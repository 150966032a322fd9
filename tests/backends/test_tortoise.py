"""What only the Tortoise store has: queries per sync, the version row and its log, model columns,
the application's Tortoise context, writers in other processes, URLs, and MySQL's collations."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tortoise import fields
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aiodurabledict import BackendError, EncodeError, InvalidKeyError, PushBackend, RawCodec, open_dict
from aiodurabledict.backends.tortoise import ModelDict, PostgresBackend, TortoiseBackend, open_url_dict
from aiodurabledict.backends.tortoise.connection import OwnedDatabase
from aiodurabledict.testing.conformance import eventually
from tests.backends.tortoise_kit import (
    DIALECTS,
    Counter,
    app_context,
    backend_of,
    database,
    pooled,
    table_content,
)
from tests.stores.tortoise import Setting, TextSetting, mysql_database, tortoise_store


@pytest.fixture(params=DIALECTS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test runs on a SQLite file, a PostgreSQL schema and a MySQL database of its own."""
    async with database(request.param, tmp_path) as url:
        yield url


ROOT = Path(__file__).resolve().parents[2]


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
        await counter.attach(backend_of(reader).client())
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


async def test_writes_return_their_delta_with_tokens(db_url: str) -> None:
    """Every commit raises the version by one and carries a fresh token, its prev_token the one
    before it; writes that change nothing answer a reading at the store's version and token."""
    async with tortoise_store(db_url, model=Setting) as make, await make(watch=False) as d:
        b = backend_of(d)
        start = await b.load()
        v0, t0 = start.version, start.token
        one = await b.set("a", b"1")
        assert (one.version, one.changes, one.prev, one.prev_token) == (v0 + 1, {"a": b"1"}, v0, t0)
        assert one.token is not None
        assert len(one.token) == 16
        two = await b.update({"b": b"2", "c": b"3"})
        assert (two.version, two.prev, two.prev_token) == (v0 + 2, v0 + 1, one.token)
        three, old = await b.pop("a")
        assert (three.version, three.changes, three.prev_token, old) == (v0 + 3, {"a": None}, two.token, b"1")
        reading, old = await b.pop("a")
        assert (reading.version, reading.prev, reading.token, reading.changes, old) == (
            v0 + 3,
            None,
            three.token,
            {"a": None},
            None,
        )
        reading, stored = await b.setdefault("b", b"9")
        assert (reading.version, reading.prev, reading.token, stored) == (v0 + 3, None, three.token, b"2")
        four, stored = await b.setdefault("n", b"9")
        assert (four.version, four.prev_token, stored) == (v0 + 4, three.token, b"9")
        five = await b.clear()
        assert five.changes == {"b": None, "c": None, "n": None}
        assert (five.version, five.prev_token) == (v0 + 5, four.token)
        empty = await b.clear()
        assert (empty.version, empty.full, empty.token, empty.changes) == (v0 + 5, True, five.token, {})
        loaded = await b.load()
        assert (loaded.version, loaded.token) == (v0 + 5, five.token)
        since = await b.changes_since(v0 + 1)
        assert since.changes == {"a": None, "b": None, "c": None, "n": None}
        assert (since.version, since.prev, since.token, since.prev_token) == (
            v0 + 5,
            v0 + 1,
            five.token,
            one.token,
        )
        same = await b.changes_since(v0 + 5)
        assert (same.version, same.prev, same.token, same.prev_token) == (
            v0 + 5,
            v0 + 5,
            five.token,
            five.token,
        )


async def test_compare_and_set_under_the_lock(db_url: str) -> None:
    """compare_and_set swaps only over the expected bytes; a failed one is a reading of the key."""
    async with tortoise_store(db_url, model=Setting) as make, await make(watch=False) as d:
        b = backend_of(d)
        made, swapped = await b.compare_and_set("k", None, b"1")
        assert swapped
        assert made.changes == {"k": b"1"}
        assert made.prev is not None
        reading, swapped = await b.compare_and_set("k", b"2", b"3")
        assert not swapped
        assert (reading.version, reading.prev, reading.token, reading.changes) == (
            made.version,
            None,
            made.token,
            {"k": b"1"},
        )
        gone, swapped = await b.compare_and_set("k", b"1", None)
        assert swapped
        assert gone.changes == {"k": None}
        assert gone.version == made.version + 1
        nothing, swapped = await b.compare_and_set("k", None, None)
        assert swapped
        assert nothing.prev is None
        assert nothing.version == gone.version


async def test_log_is_trimmed_and_old_caches_reload_fully(db_url: str) -> None:
    """The change log keeps ``log_keep`` versions; a cache older than its horizon gets a full delta."""
    async with tortoise_store(db_url, model=Setting, log_keep=8) as make, await make(watch=False) as d:
        b = backend_of(d)
        for i in range(40):
            await d.set(f"k{i % 3}", i)
        rows = await table_content(
            d, 'SELECT COUNT(*) FROM "aiodurabledict_change" WHERE "name" = $1', b.name
        )
        assert int(rows[0][0]) <= 8 + b.dialect.trim_every
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
        if backend_of(d).kind in {"sqlite", "mysql"}:
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


async def test_model_columns_are_checked(tmp_path: Path) -> None:
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
    with pytest.raises(ValueError, match="no Tortoise context"):
        TortoiseBackend(Setting)
    async with app_context(f"sqlite://{tmp_path / 'db.sqlite'}"):
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


async def test_dialect_and_push_are_decided_when_built(db_url: str) -> None:
    """The backend's kind comes from the context's connection before any I/O, and only PostgreSQL's
    backend pushes (it is a PushBackend from the start, not after open)."""
    async with app_context(db_url):
        d = ModelDict(Setting)
        kind = db_url.split(":", 1)[0]
        assert backend_of(d).kind == kind
        assert isinstance(d.backend, PushBackend) is (kind == "postgres")
        assert isinstance(d.backend, PostgresBackend) is (kind == "postgres")


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
        assert row.token is not None
        assert row.store is not None
        assert row.secret is not None
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
        owned = backend_of(d).database
        assert isinstance(owned, OwnedDatabase)
        assert owned.opened
    assert not owned.opened
    async with open_url_dict(url, keyspace="u", watch=False) as again:
        assert again["k"] == [1]


def test_sqlite_url_refuses_unknown_options(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unknown sqlite:// option (a password, a typo) is refused at once, naming the known ones,
    and never becomes a PRAGMA that the driver logs; the known ones are taken."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError, match="unknown sqlite option") as info:
        open_dict(f"{url}?password=hunter2")
    message = str(info.value)
    assert "hunter2" not in message
    assert (
        "known options: busy_timeout, foreign_keys, journal_mode, journal_size_limit, synchronous" in message
    )
    assert "hunter2" not in caplog.text
    with pytest.raises(ValueError, match="'jornal_mode'"):
        open_url_dict(f"{url}?jornal_mode=WAL")
    with pytest.raises(ValueError, match="plain word"):
        open_url_dict(f"{url}?journal_mode=WAL;DROP")
    d = open_dict(f"{url}?journal_mode=WAL&busy_timeout=1000&keyspace=k")
    assert backend_of(d).kind == "sqlite"


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
    """8 processes race: setdefault has one winner, every write lands, the version counts every
    commit, and each commit's log rows carry the token the next commit names as its predecessor."""
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
        rows = await table_content(
            d,
            'SELECT DISTINCT "version", "token" FROM "aiodurabledict_change" WHERE "name" = $1',
            backend_of(d).name,
        )
        tokens = dict(rows)
        assert sorted(tokens) == list(range(1, d.version + 1))
        assert len(set(tokens.values())) == len(tokens)


# -- MySQL ---------------------------------------------------------------------------------------


@pytest.fixture
async def mysql_url() -> Any:
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
        assert not isinstance(reader.backend, PushBackend)
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
        assert backend_of(reader).kind == "mysql"


async def test_sqlite_has_no_push(tmp_path: Path) -> None:
    """SQLite cannot push: the backend is no PushBackend, so the dict polls at poll_interval."""
    async with tortoise_store(f"sqlite://{tmp_path / 'x.db'}", model=Setting) as make, await make() as d:
        assert not isinstance(d.backend, PushBackend)
        assert backend_of(d).poll_interval == 1.0
