"""Tortoise ORM for the conformance suite: SQLite (a file) and PostgreSQL, each with and without memcached.

Every dict a factory makes has a Tortoise context of its own (as another process would), built the way
an application builds one; the dict is constructed while that context is current. SQLite uses a file
in the test's tmp_path; PostgreSQL a schema of its own per test, dropped afterwards. The params mix a
user's own model (one table, one dict) with the ready ``DurableEntry`` table (one keyspace per test).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from tortoise import fields
from tortoise.context import TortoiseContext
from tortoise.models import Model

from aiodurabledict import AsyncDurableDict
from aiodurabledict.testing.conformance import Factory
from tests.servers import host_port, postgres_url, require_memcached, require_postgres, unavailable


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


@asynccontextmanager
async def tortoise_store(
    db_url: str,
    *,
    model: type[Model] | None = None,
    keyspace: str | None = None,
    memcached: str | None = None,
    **defaults: Any,
) -> AsyncIterator[Factory]:
    """A factory of ``ModelDict``s on ``db_url``, each with its own Tortoise context (and memcached client).

    ``model=None`` means the ready ``DurableEntry`` table with ``keyspace``.
    """
    from aiodurabledict.backends.tortoise import ModelDict
    from aiodurabledict.backends.tortoise_models import DurableEntry

    async with AsyncExitStack() as stack:
        created = False

        async def make(**opts: Any) -> AsyncDurableDict[Any]:
            nonlocal created
            ctx = TortoiseContext()
            stack.push_async_callback(ctx.close_connections)
            with ctx:
                await ctx.init(config=tortoise_config(db_url))
                if not created:
                    await ctx.generate_schemas(safe=True)
                    created = True
            if memcached is not None:
                import aiomcache

                host, port = host_port(memcached, 11211)
                client = aiomcache.Client(host, port)
                stack.push_async_callback(client.close)
                opts.setdefault("cache", client)
            for name, value in defaults.items():
                opts.setdefault(name, value)
            with ctx:
                if model is None:
                    return ModelDict(DurableEntry, keyspace=keyspace or "default", **opts)
                return ModelDict(model, **opts)

        yield make


def _tortoise(database: str, *, custom_model: bool, memcached: bool) -> Any:
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
        else:
            async with (
                postgres_schema() as schema,
                tortoise_store(schema_url(schema), model=model, keyspace=keyspace, memcached=mc) as make,
            ):
                yield make

    return factory


_PG = pytest.mark.postgres
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
]
