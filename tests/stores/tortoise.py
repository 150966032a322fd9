"""Tortoise ORM for the conformance suite: SQLite (a file), PostgreSQL and MySQL, each with and without
memcached.

Every dict a factory makes has a Tortoise context of its own (as another process would), built the way
an application builds one; the dict is constructed while that context is current. SQLite uses a file
in the test's tmp_path; PostgreSQL a schema of its own per test, MySQL a database of its own per test,
both dropped afterwards. The params mix a
user's own model (one table, one dict) with the ready ``DurableEntry`` table (one keyspace per test).
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from tortoise import fields
from tortoise.context import TortoiseContext
from tortoise.models import Model

from aiodurabledict import AsyncDurableDict, Backend
from aiodurabledict.testing.conformance import Factory
from tests.servers import (
    answers,
    host_port,
    postgres_url,
    require_memcached,
    require_postgres,
    unavailable,
)
from tests.wrappers import deaf


class Setting(Model):
    """A user's own model: a unique string key and a binary value."""

    id = fields.IntField(primary_key=True)
    key = fields.CharField(max_length=255, unique=True)
    value = fields.BinaryField()

    class Meta:
        table = "app_setting"


class TextSetting(Model):
    """A user's own model with a text value column (JSON is UTF-8 text)."""

    key = fields.CharField(max_length=255, primary_key=True)
    value = fields.TextField(null=True)

    class Meta:
        table = "app_text_setting"


__models__ = [Setting, TextSetting]
MODELS_MODULE = __name__


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema on the shared server, dropped (with everything in it) afterwards."""
    # asyncpg ships no type information.
    asyncpg: Any = importlib.import_module("asyncpg")
    url = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        admin = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL at {url} refused us: {exc}")
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
    finally:
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()


def mysql_url() -> str:
    """URL of the shared MySQL (or MariaDB) server; its database part is replaced per test."""
    return os.environ.get("AIODURABLEDICT_MYSQL_URL") or "mysql://root:@127.0.0.1:3306/test"


@asynccontextmanager
async def mysql_database() -> AsyncIterator[str]:
    """The Tortoise URL of a fresh database on the shared MySQL server, dropped afterwards."""
    from urllib.parse import urlsplit

    asyncmy: Any = importlib.import_module("asyncmy")
    parts = urlsplit(mysql_url())
    host, port = parts.hostname or "127.0.0.1", parts.port or 3306
    if not answers(f"{host}:{port}"):
        unavailable(f"MySQL at {host}:{port} does not answer")
    user, password = parts.username or "root", parts.password or ""
    database = f"t_{uuid.uuid4().hex[:16]}"
    try:
        admin = await asyncmy.connect(host=host, port=port, user=user, password=password, connect_timeout=5)
    except (OSError, asyncmy.errors.MySQLError) as exc:
        unavailable(f"MySQL at {host}:{port} refused us: {exc}")
    try:
        async with admin.cursor() as cursor:
            await cursor.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        yield f"mysql://{parts.netloc}/{database}"
    finally:
        try:
            async with admin.cursor() as cursor:
                await cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            await admin.ensure_closed()


# Tortoise creates MySQL tables with the charset's default collation (case-insensitive); ModelDict
# needs the key columns compared exactly, as an application on MySQL makes them.
_BINARY_KEYS = {
    "app_setting": ["`key` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"],
    "app_text_setting": ["`key` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"],
    "aiodurabledict_version": ["`name` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"],
    "aiodurabledict_entry": [
        "`keyspace` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
        "`key` VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
    ],
}


async def generate_schemas(ctx: TortoiseContext) -> None:
    """The application's schema generation; on MySQL, key columns then get a binary collation."""
    await ctx.generate_schemas(safe=True)
    for alias in ctx.connections.db_config:
        client: Any = ctx.connections.get(alias)
        if client.capabilities.dialect != "mysql":
            continue
        _, rows = await client.execute_query(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        )
        for row in rows:
            table = row["TABLE_NAME"]
            for column in _BINARY_KEYS.get(table, []):
                await client.execute_script(f"ALTER TABLE `{table}` MODIFY {column}")


def schema_url(schema: str, base: str | None = None) -> str:
    """The Tortoise URL of ``schema`` on the shared PostgreSQL (or on ``base``)."""
    base = base or postgres_url()
    return f"{base}{'&' if '?' in base else '?'}schema={schema}"


def tortoise_config(db_url: str, *modules: str) -> dict[str, Any]:
    """An application's Tortoise config: the test models (and ``modules``) on ``db_url``.

    The connection is named after the database kind: Tortoise caches each model's SQL per connection
    name, process-wide, and these tests use one model on SQLite and PostgreSQL in one process.
    """
    alias = db_url.split(":", 1)[0]
    return {
        "connections": {alias: db_url},
        "apps": {"models": {"models": [MODELS_MODULE, *modules], "default_connection": alias}},
    }


#: ``ModelDict``'s own keywords: everything else is the dict's.
BACKEND_OPTIONS = frozenset(
    {
        "key_col",
        "value_col",
        "cache",
        "keyspace",
        "keyspace_col",
        "name",
        "cache_timeout",
        "confirm_interval",
        "log_keep",
        "marker_key",
        "connection",
        "context",
        "database",
    }
)


def wrapped(model: type[Model], wrap: Callable[[Backend], Backend], **opts: Any) -> AsyncDurableDict[Any]:
    """A dict on ``model`` as ``ModelDict`` would make it, its backend seen through ``wrap`` (``deaf``,
    ``spied``): the same store with one thing changed, for tests."""
    from aiodurabledict.backends.tortoise import TortoiseBackend

    backend = TortoiseBackend.for_model(model, **{k: v for k, v in opts.items() if k in BACKEND_OPTIONS})
    return AsyncDurableDict(wrap(backend), **{k: v for k, v in opts.items() if k not in BACKEND_OPTIONS})


@asynccontextmanager
async def tortoise_store(
    db_url: str,
    *,
    model: type[Model] | None = None,
    keyspace: str | None = None,
    memcached: str | None = None,
    wrap: Callable[[Backend], Backend] | None = None,
    **defaults: Any,
) -> AsyncIterator[Factory]:
    """A factory of ``ModelDict``s on ``db_url``, each with its own Tortoise context (and memcached client).

    ``model=None`` means the ready ``DurableEntry`` table with ``keyspace``. ``wrap`` (or
    ``make(wrap=deaf)``) gives dicts whose backend is seen through a test wrapper (``tests.wrappers``).
    """
    store_wrap = wrap
    from aiodurabledict.backends.tortoise import ModelDict
    from aiodurabledict.backends.tortoise_models import DurableEntry

    async with AsyncExitStack() as stack:
        created = False

        async def make(
            wrap: Callable[[Backend], Backend] | None = None, **opts: Any
        ) -> AsyncDurableDict[Any]:
            nonlocal created
            ctx = TortoiseContext()
            stack.push_async_callback(ctx.close_connections)
            with ctx:
                await ctx.init(config=tortoise_config(db_url))
                if not created:
                    await generate_schemas(ctx)
                    created = True
            if memcached is not None:
                import aiomcache

                host, port = host_port(memcached, 11211)
                client = aiomcache.Client(host, port)
                stack.push_async_callback(client.close)
                opts.setdefault("cache", client)
            for name, value in defaults.items():
                opts.setdefault(name, value)
            if model is None:
                opts.setdefault("keyspace", keyspace or "default")
            wrap = wrap or store_wrap
            with ctx:
                if wrap is not None:
                    return wrapped(model or DurableEntry, wrap, **opts)
                return ModelDict(model or DurableEntry, **opts)

        yield make


def _tortoise(
    database: str, *, custom_model: bool, memcached: bool, wrap: Callable[[Backend], Backend] | None = None
) -> Any:
    @asynccontextmanager
    async def factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
        mc = require_memcached() if memcached else None
        model = Setting if custom_model else None
        keyspace = f"k{uuid.uuid4().hex[:12]}"
        if database == "sqlite":
            path = request.getfixturevalue("tmp_path") / "store.db"
            async with tortoise_store(
                f"sqlite://{path}", model=model, keyspace=keyspace, memcached=mc, poll_interval=0.05
            ) as make:
                yield make
        elif database == "mysql":
            async with (
                mysql_database() as url,
                tortoise_store(url, model=model, keyspace=keyspace, memcached=mc, poll_interval=0.05) as make,
            ):
                yield make
        else:
            async with (
                postgres_schema() as schema,
                tortoise_store(
                    schema_url(schema), model=model, keyspace=keyspace, memcached=mc, wrap=wrap
                ) as make,
            ):
                yield make

    return factory


_PG = pytest.mark.postgres
_MY = pytest.mark.mysql
_MC = pytest.mark.memcached
PARAMS = [
    pytest.param(_tortoise("sqlite", custom_model=True, memcached=False), id="tortoise-sqlite"),
    pytest.param(
        _tortoise("sqlite", custom_model=False, memcached=True), id="tortoise-sqlite-memcached", marks=_MC
    ),
    pytest.param(
        _tortoise("postgres", custom_model=False, memcached=False), id="tortoise-postgres", marks=_PG
    ),
    pytest.param(
        _tortoise("postgres", custom_model=True, memcached=True),
        id="tortoise-postgres-memcached",
        marks=[_PG, _MC],
    ),
    # Every NOTIFY lost: the heartbeat and the polls must do all the work.
    pytest.param(
        _tortoise("postgres", custom_model=True, memcached=False, wrap=deaf),
        id="tortoise-postgres-deaf",
        marks=_PG,
    ),
    pytest.param(_tortoise("mysql", custom_model=True, memcached=False), id="tortoise-mysql", marks=_MY),
    pytest.param(
        _tortoise("mysql", custom_model=False, memcached=True),
        id="tortoise-mysql-memcached",
        marks=[_MY, _MC],
    ),
]
