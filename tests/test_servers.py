"""The private servers that fault tests rely on: they start, answer their protocol, and come back on
the same port after a kill; and ``unavailable()`` skips locally but fails where servers are required."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from tests.servers import (
    REQUIRE_SERVERS_ENV,
    MemcachedServer,
    PostgresServer,
    RedisServer,
    ZookeeperServer,
    answers,
    free_port,
    host_port,
    redis_server,
    unavailable,
)

pytestmark = pytest.mark.faults

# Imported so that pytest finds the fixture in this module.
__all__ = ["redis_server"]


async def test_redis_answers_and_keeps_data_across_a_kill_when_persistent() -> None:
    """A persistent private Redis answers PING and, killed and restarted on its port, still has its keys."""
    from redis.asyncio import Redis

    async with RedisServer(persistent=True) as server:
        port = server.port
        client = Redis.from_url(server.url)
        try:
            assert await client.ping()
            await client.set("k", b"v")
            server.kill()
            assert not server.running
            await server.astart()
            assert server.port == port
            await client.connection_pool.disconnect()  # connections to the killed process are dead
            assert await client.get("k") == b"v"
        finally:
            await client.aclose()


async def test_redis_restart_without_persistence_starts_empty() -> None:
    """A non-persistent private Redis restarted gracefully comes back empty, on the same port."""
    from redis.asyncio import Redis

    async with RedisServer() as server:
        client = Redis.from_url(server.url)
        try:
            await client.set("k", b"v")
            await server.arestart()
            await client.connection_pool.disconnect()
            assert await client.get("k") is None
        finally:
            await client.aclose()


async def test_frozen_redis_does_not_answer_until_thawed() -> None:
    """``freeze()`` keeps the port open but stops replies; ``thaw()`` brings them back."""
    from redis.asyncio import Redis

    async with RedisServer() as server:
        client = Redis.from_url(server.url)
        try:
            assert await client.ping()
            server.freeze()
            assert answers(server.address)  # the kernel still accepts connections
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await client.ping()
            server.thaw()
            # The timed-out connection is in an unknown state; a fresh one must answer.
            await client.connection_pool.disconnect()
            assert await client.ping()
        finally:
            await client.aclose()


def test_redis_server_fixture_starts_servers_and_cleans_up(
    redis_server: Callable[..., RedisServer],
) -> None:
    """The factory fixture hands out running servers on distinct ports."""
    first, second = redis_server(), redis_server(persistent=True)
    assert first.running
    assert second.running
    assert first.port != second.port
    assert answers(first.address)
    assert second.persistent


async def test_memcached_answers_version_and_restarts_on_the_same_port() -> None:
    """A private memcached answers ``version``, and again after a kill and restart on the same port."""
    import aiomcache

    with MemcachedServer() as server:
        port = server.port
        client = aiomcache.Client("127.0.0.1", server.port)
        try:
            assert await client.version()
            server.kill()
            await server.astart()
            assert server.port == port
            await client.close()  # drop the pooled connection to the killed process
            client = aiomcache.Client("127.0.0.1", server.port)
            assert await client.version()
        finally:
            await client.close()


async def test_zookeeper_answers_and_keeps_znodes_across_a_kill() -> None:
    """A private ZooKeeper lists ``/`` and, killed and restarted on its port, still has the znodes written."""
    import aiozk

    async with ZookeeperServer() as server:
        port = server.port
        client = aiozk.ZKClient(server.address, session_timeout=10)
        await client.start()
        try:
            assert "zookeeper" in await client.get_children("/")
            await client.create("/kept", data=b"x")
        finally:
            await client.close()
        server.kill()
        await server.astart()
        assert server.port == port
        client = aiozk.ZKClient(server.address, session_timeout=10)
        await client.start()
        try:
            assert "kept" in await client.get_children("/")
        finally:
            await client.close()


async def test_postgres_answers_and_keeps_tables_across_a_kill() -> None:
    """A private PostgreSQL answers ``select 1`` and, killed and restarted on its port, keeps committed rows."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    async with PostgresServer() as server:
        port = server.port
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("select 1") == 1
            await conn.execute("create table kept (v int); insert into kept values (7)")
        finally:
            await conn.close()
        server.kill()
        await server.astart()
        assert server.port == port
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("select v from kept") == 7
        finally:
            await conn.close()


def test_closed_server_is_gone_and_its_folder_removed() -> None:
    """Leaving the ``with`` block kills the process and deletes its temporary folder."""
    with RedisServer() as server:
        folder = server.dir
        pid = server.pid
        assert pid is not None
    assert not server.running
    assert not folder.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_unavailable_skips_locally_and_fails_when_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``unavailable()`` skips a test, unless AIODURABLEDICT_REQUIRE_SERVERS=1 makes it a failure."""
    monkeypatch.delenv(REQUIRE_SERVERS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        unavailable("no server")
    monkeypatch.setenv(REQUIRE_SERVERS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no server"):
        unavailable("no server")


def test_addresses_parse_and_a_closed_port_does_not_answer() -> None:
    """URLs and ``host:port`` addresses split alike; nothing answers on a port nobody listens on."""
    assert host_port("redis://127.0.0.1:6390/0") == ("127.0.0.1", 6390)
    assert host_port("postgres://postgres@127.0.0.1:5433/test") == ("127.0.0.1", 5433)
    assert host_port("127.0.0.1:2182") == ("127.0.0.1", 2182)
    assert not answers(f"127.0.0.1:{free_port()}", timeout=0.2)
