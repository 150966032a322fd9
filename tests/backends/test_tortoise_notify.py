"""PostgreSQL NOTIFY: what notices carry, who may be believed (only notices signed with the dict's
secret), the same database reached by two host names, and one LISTEN connection per database."""

from __future__ import annotations

import base64
import importlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from aiodurabledict import AsyncDurableDict, PushBackend
from aiodurabledict.backends.tortoise import ModelDict, PostgresBackend
from aiodurabledict.backends.tortoise_models import DurableEntry
from aiodurabledict.testing.conformance import eventually
from tests.backends.tortoise_kit import app_context, backend_of, database, notices_of
from tests.servers import PostgresServer, ServerError, host_port, postgres_url, require_memcached, unavailable
from tests.stores.tortoise import Setting, postgres_schema, schema_url, tortoise_store
from tests.wrappers import spied

pytestmark = pytest.mark.postgres

# asyncpg ships no type information.
asyncpg: Any = importlib.import_module("asyncpg")


def postgres_of(d: AsyncDurableDict[Any]) -> PostgresBackend:
    backend = backend_of(d)
    assert isinstance(backend, PostgresBackend)
    return backend


def channel_of(d: AsyncDurableDict[Any]) -> str:
    identity = postgres_of(d).identity
    assert identity is not None
    return f"aiodurabledict_{identity.store}"


async def test_notify_carries_values_or_just_the_version(tmp_path: Path) -> None:
    """Small writes arrive with their values, token and predecessor's token; large ones as a
    version-only notice that the dict fetches."""
    async with (
        database("postgres", tmp_path) as url,
        tortoise_store(url, model=Setting, heartbeat=30) as make,
        await make(wrap=spied) as reader,
        await make(watch=False) as writer,
    ):
        assert isinstance(reader.backend, PushBackend)
        await eventually(lambda: reader.live)
        await writer.set("small", 1)
        await writer.set("big", "x" * 20_000)
        await eventually(lambda: "big" in reader.view)
        assert reader["big"] == "x" * 20_000
        seen = notices_of(reader)
        assert [(n.version, n.complete) for n in seen] == [(1, True), (2, False)]
        assert seen[0].changes == {"small": b"1"}
        assert seen[0].prev_token is None
        assert seen[1].prev_token == seen[0].token
        assert seen[1].token == (await backend_of(writer).load()).token


@pytest.mark.memcached
async def test_one_database_by_two_host_names_shares_notices_and_marker() -> None:
    """A reader that reaches the database as ``localhost`` and a writer that reaches it as
    ``127.0.0.1`` share the NOTIFY channel and the memcached marker: both are named after the store's
    identity in the version row, not after a host name."""
    import aiomcache

    base = postgres_url()
    host, _port = host_port(base, 5432)
    if host != "127.0.0.1":
        pytest.skip("needs the shared PostgreSQL on 127.0.0.1")
    mc = aiomcache.Client(*host_port(require_memcached(), 11211))
    async with AsyncExitStack() as stack:
        stack.push_async_callback(mc.close)
        schema = await stack.enter_async_context(postgres_schema())
        by_ip = schema_url(schema)
        by_name = by_ip.replace("@127.0.0.1:", "@localhost:", 1)
        assert by_name != by_ip
        writers = await stack.enter_async_context(tortoise_store(by_ip, model=Setting))
        readers = await stack.enter_async_context(tortoise_store(by_name, model=Setting))
        writer = await stack.enter_async_context(await writers(watch=False, cache=mc))
        reader = await stack.enter_async_context(
            await readers(cache=mc, heartbeat=60, poll_interval=60, wrap=spied)
        )
        await eventually(lambda: reader.live)
        assert channel_of(reader) == channel_of(writer)
        marker, other = backend_of(reader).marker, backend_of(writer).marker
        assert marker is not None
        assert other is not None
        assert marker.key == other.key
        await writer.set("k", 1)
        # Only a notice can bring it: the next check is a minute away.
        await eventually(lambda: reader.view.get("k") == 1, within=5)
        assert [n.version for n in notices_of(reader)] == [1]


@asynccontextmanager
async def forger(url: str) -> AsyncIterator[Any]:
    """A connection as a role that may only CONNECT to the database: it can neither read nor write
    the dict's tables, and may LISTEN and NOTIFY like any role."""
    role = f"forger_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url(), timeout=5)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        try:
            conn = await asyncpg.connect(url.split("?", 1)[0], user=role, timeout=5)
        except asyncpg.PostgresError as exc:
            unavailable(f"cannot connect as a role of our own (the server wants a password?): {exc}")
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_a_role_that_may_only_connect_cannot_plant_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A role with nothing but CONNECT sends a notice that follows the cache exactly (it heard the
    real ones on the channel) and replays a real one: neither changes a cache, the forged one is
    ignored with one warning that quotes nothing of it."""
    async with (
        database("postgres", tmp_path) as url,
        tortoise_store(url, model=Setting, heartbeat=30) as make,
        await make() as reader,
        await make(watch=False) as writer,
        forger(url) as evil,
    ):
        await eventually(lambda: reader.live)
        channel = channel_of(reader)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await evil.fetch(f"SELECT * FROM {url.split('schema=')[1].split('&')[0]}.app_setting")
        heard: list[str] = []
        await evil.add_listener(channel, lambda *args: heard.append(args[3]))
        await writer.set("k", "real")
        await eventually(lambda: reader.view.get("k") == "real" and len(heard) == 1)
        await writer.set("k", "second")
        await eventually(lambda: reader.view.get("k") == "second" and len(heard) == 2)

        token = (await backend_of(reader).load()).token
        planted = base64.b64encode(b'"planted"').decode()
        body = f'{{"v":{reader.version + 1},"t":"f0f0f0f0f0f0f0f0","p":"{token}","c":{{"k":"{planted}"}}}}'
        with caplog.at_level(logging.WARNING, logger="aiodurabledict"):
            await evil.execute("SELECT pg_notify($1, $2)", channel, "0" * 64 + body)
            await evil.execute("SELECT pg_notify($1, $2)", channel, heard[0])  # a replay of "real"
            await writer.set("after", 1)  # notices arrive in order: both came before this one
            await eventually(lambda: reader.view.get("after") == 1)
        assert reader["k"] == "second"
        assert postgres_of(reader).ignored_notices == 1
        warnings = [r.getMessage() for r in caplog.records if "NOTIFY" in r.getMessage()]
        assert len(warnings) == 1
        assert "signature" in warnings[0]
        assert "planted" not in caplog.text
        assert planted not in caplog.text


async def test_malformed_notices_keep_the_subscription(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fifty malformed NOTIFYs on the dict's channel are ignored (one warning): the LISTEN
    connection stays, and the dict goes on following the store live."""
    async with (
        database("postgres", tmp_path) as url,
        tortoise_store(url, model=Setting, heartbeat=30) as make,
        await make() as reader,
        await make(watch=False) as writer,
    ):
        await eventually(lambda: reader.live)
        since = reader.status.since
        channel = channel_of(reader)
        admin = await asyncpg.connect(url.split("?", 1)[0], timeout=5)
        try:
            with caplog.at_level(logging.WARNING, logger="aiodurabledict"):
                for n in range(50):
                    await admin.execute(
                        "SELECT pg_notify($1, $2)", channel, ["", "{", "not json", "x" * 70][n % 4]
                    )
                await writer.set("k", 1)
                await eventually(lambda: reader.view.get("k") == 1)
        finally:
            await admin.close()
        assert postgres_of(reader).ignored_notices == 50
        assert reader.status.since == since
        assert reader.live
        assert len([r for r in caplog.records if "NOTIFY" in r.getMessage()]) == 1


@pytest.mark.slow
async def test_one_listen_connection_per_database() -> None:
    """Twenty dicts with watchers (two keyspaces, so two channels) on one database, through one
    application client whose pool has one connection, use one more connection for all their notices,
    not one each; all follow live; the connection goes when the last dict closes."""
    try:
        server = PostgresServer()
    except ServerError as exc:
        unavailable(str(exc))
    with server:
        await server.astart()
        url = f"{server.url}?minsize=1&maxsize=1"
        admin = await asyncpg.connect(server.url, timeout=5)
        count = (
            "SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()"
        )
        try:
            async with app_context(url), AsyncExitStack() as stack:
                writers = [
                    await stack.enter_async_context(ModelDict(DurableEntry, keyspace=ks, watch=False))
                    for ks in ("a", "b")
                ]
                dicts = [
                    await stack.enter_async_context(
                        ModelDict(DurableEntry, keyspace="ab"[i % 2], heartbeat=30, poll_interval=30)
                    )
                    for i in range(20)
                ]
                await eventually(lambda: all(d.live for d in dicts))
                assert await admin.fetchval(count) == 2  # the pool's one, and one LISTEN
                for writer in writers:
                    await writer.set("k", writer.backend.name)
                await eventually(lambda: all("k" in d.view for d in dicts), within=5)
            await eventually(lambda: True)
            assert await admin.fetchval(count) == 0
        finally:
            await admin.close()
