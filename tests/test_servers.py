"""The private servers that fault tests rely on: they start, answer their protocol, and come back on
the same port after a kill; the multi-node engines fail over as they should (and lose the writes a
lagging replica missed); the shared engines serve a write; and ``unavailable()`` skips locally but
fails where servers are required."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiozk
import pytest
from redis.asyncio import Redis, RedisCluster, Sentinel
from redis.asyncio.cluster import ClusterNode

from tests.servers import (
    REQUIRE_SERVERS_ENV,
    MemcachedServer,
    PostgresServer,
    RedisClusterServers,
    RedisSentinelSet,
    RedisServer,
    ZookeeperEnsemble,
    ZookeeperServer,
    answers,
    free_port,
    host_port,
    redis_cluster_servers,
    redis_sentinel_set,
    redis_server,
    require_redis_cluster,
    require_redis_sentinel,
    require_zookeeper_ensemble,
    unavailable,
    zookeeper_ensemble,
)

pytestmark = pytest.mark.faults

# Imported so that pytest finds the fixtures in this module.
__all__ = ["redis_cluster_servers", "redis_sentinel_set", "redis_server", "zookeeper_ensemble"]


async def test_redis_answers_and_keeps_data_across_a_kill_when_persistent() -> None:
    """A persistent private Redis answers PING and, killed and restarted on its port, still has its keys."""
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


# --- multi-node engines ---------------------------------------------------------------------------


@asynccontextmanager
async def cluster_client(addresses: list[str]) -> AsyncIterator[RedisCluster]:
    """A plain redis-py cluster client, built afresh (no topology cached from before a failover)."""
    nodes = [ClusterNode(*host_port(address)) for address in addresses]
    client = RedisCluster(startup_nodes=nodes, decode_responses=True, socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def sentinel_master(sentinels: list[str], service: str) -> AsyncIterator[Redis]:
    """A plain redis-py client of the master that the sentinels name now."""
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # redis-py leaves its __init__ unannotated
        [host_port(a) for a in sentinels], socket_timeout=2, decode_responses=True
    )
    client = sentinel.master_for(service)
    try:
        yield client
    finally:
        await client.aclose()
        for connection in sentinel.sentinels:
            await connection.aclose()


@asynccontextmanager
async def zookeeper_client(connect_string: str, session_timeout: float = 10) -> AsyncIterator[aiozk.ZKClient]:
    """A plain aiozk client of the ensemble."""
    client = aiozk.ZKClient(connect_string, session_timeout=session_timeout)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_redis_cluster_promotes_the_replica_of_a_killed_master(
    redis_cluster_servers: Callable[..., RedisClusterServers],
) -> None:
    """Killing a master makes its replica the master of its slots, with the writes it had; the old
    master, restarted, comes back as the replica of the new one."""
    cluster = redis_cluster_servers()
    assert len(cluster.nodes) == 6
    assert len(cluster.masters()) == 3
    async with cluster_client(cluster.startup_nodes) as client:
        await client.set("k", "v")
    master = cluster.master_for_key("k")
    replica = cluster.replica_of(master)
    cluster.wait_replicated(master)

    started = time.monotonic()
    promoted = await cluster.afail_over(master)
    print(f"redis cluster failover after kill -9: {time.monotonic() - started:.2f}s")
    assert promoted is replica
    assert replica.role == "master"
    assert not master.running
    async with cluster_client(cluster.startup_nodes) as client:
        assert await client.get("k") == "v"
        await client.set("k", "w")

    await cluster.arestart(master)
    assert cluster.replica_of(replica) is master
    assert master.role == "slave"


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_redis_cluster_takeover_by_a_lagging_replica_loses_the_writes_it_missed(
    redis_cluster_servers: Callable[..., RedisClusterServers],
) -> None:
    """Writes acknowledged by a master while its replica lags are gone once that replica takes over;
    the writes it had received survive."""
    cluster = redis_cluster_servers()
    before = [f"{{lag}}:before:{i}" for i in range(20)]
    after = [f"{{lag}}:after:{i}" for i in range(50)]
    async with cluster_client(cluster.startup_nodes) as client:
        for key in before:
            await client.set(key, "1")
        master = cluster.master_for_key("{lag}")
        replica = cluster.lag_replica(master)
        for key in after:
            assert await client.set(key, "1")  # acknowledged by the master
    promoted = await cluster.atake_over(replica)
    assert promoted is replica
    assert cluster.master_for_key("{lag}") is replica
    async with cluster_client(cluster.startup_nodes) as client:
        assert await client.exists(*before) == len(before)
        lost = len(after) - await client.exists(*after)
    print(f"redis cluster lagging-replica takeover lost {lost} of {len(after)} acknowledged writes")
    assert lost > 0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_redis_sentinel_promotes_the_replica_when_the_master_is_killed(
    redis_sentinel_set: Callable[..., RedisSentinelSet],
) -> None:
    """Killing the master makes the sentinels promote the replica, with the writes it had; the old
    master, restarted, replicates the new one."""
    sentinels = redis_sentinel_set()
    assert sentinels.service_name == "mymaster"
    async with sentinel_master(sentinels.sentinels, sentinels.service_name) as client:
        await client.set("k", "v")
    old = sentinels.master()
    replica = sentinels.replica()
    sentinels.wait_replicated()

    started = time.monotonic()
    old_address = sentinels.kill_master()
    new_address = await sentinels.await_for_failover(old_address)
    print(f"redis sentinel failover after kill -9: {time.monotonic() - started:.2f}s")
    assert old_address == old.address
    assert new_address == replica.address
    async with sentinel_master(sentinels.sentinels, sentinels.service_name) as client:
        assert await client.get("k") == "v"
        await client.set("k", "w")

    await sentinels.arestart(old)
    await sentinels.await_until_ok()
    assert old.info().get("role") == "slave", sentinels.log_tails(20)
    assert sentinels.master_address() == replica.address


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_redis_sentinel_failover_to_a_lagging_replica_loses_the_writes_it_missed(
    redis_sentinel_set: Callable[..., RedisSentinelSet],
) -> None:
    """Writes acknowledged by the master while the replica lags are gone once the sentinels promote
    that replica; the writes it had received survive."""
    sentinels = redis_sentinel_set()
    before = [f"before:{i}" for i in range(20)]
    after = [f"after:{i}" for i in range(50)]
    async with sentinel_master(sentinels.sentinels, sentinels.service_name) as client:
        for key in before:
            await client.set(key, "1")
        replica = sentinels.lag_replica()
        for key in after:
            assert await client.set(key, "1")  # acknowledged by the master
    started = time.monotonic()
    new_address = await sentinels.atake_over()
    print(f"redis sentinel lagging-replica failover: {time.monotonic() - started:.2f}s")
    assert new_address == replica.address
    async with sentinel_master(sentinels.sentinels, sentinels.service_name) as client:
        assert await client.exists(*before) == len(before)
        lost = len(after) - await client.exists(*after)
    print(f"redis sentinel lagging-replica failover lost {lost} of {len(after)} acknowledged writes")
    assert lost > 0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_zookeeper_ensemble_elects_a_new_leader_when_the_leader_is_killed(
    zookeeper_ensemble: Callable[..., ZookeeperEnsemble],
) -> None:
    """Killing the leader makes the two others elect a new one within seconds; a client keeps its
    session and its znodes, and the old leader, restarted, follows."""
    ensemble = zookeeper_ensemble()
    assert len(ensemble.connect_string.split(",")) == 3
    # aiozk notices that a follower dropped it for the election only when a request times out,
    # after about the session timeout: keep that short.
    async with zookeeper_client(ensemble.connect_string, session_timeout=4) as client:
        await client.create("/before", data=b"1")
        leader = ensemble.leader()
        assert len(ensemble.followers()) == 2

        started = time.monotonic()
        ensemble.kill(leader)
        new_leader = await ensemble.await_for_quorum()
        elapsed = time.monotonic() - started
        print(f"zookeeper election after kill -9 of the leader: {elapsed:.2f}s")
        assert new_leader is not leader
        assert elapsed < 10
        # A request caught on a connection that the election closed fails; the next one goes to
        # a serving peer, in the same session.
        async with asyncio.timeout(20):
            while True:
                try:
                    assert await client.get_data("/before") == b"1"
                    break
                except aiozk.exc.ZKError:
                    await asyncio.sleep(0.2)
            await client.create("/after", data=b"2")

        await ensemble.arestart(leader)
        await ensemble.await_for_quorum()
        assert leader.mode() == "follower"
        assert ensemble.leader() is new_leader


# --- the shared engines (scripts/servers.sh) --------------------------------------------------------


async def test_shared_redis_cluster_serves_a_write() -> None:
    """The shared Redis Cluster (AIODURABLEDICT_REDIS_CLUSTER) takes a write on every master."""
    addresses = require_redis_cluster()
    prefix = f"aiodurabledict-test:{uuid.uuid4().hex}"
    keys = [f"{prefix}:{i}" for i in range(30)]  # spread over the slots of every master
    async with cluster_client(addresses) as client:
        try:
            for key in keys:
                await client.set(key, "1", ex=60)
            assert [await client.get(key) for key in keys] == ["1"] * len(keys)
        finally:
            for key in keys:
                await client.delete(key)


async def test_shared_redis_sentinel_serves_a_write() -> None:
    """The shared sentinels (AIODURABLEDICT_REDIS_SENTINEL) name a master that takes a write."""
    sentinels, service = require_redis_sentinel()
    key = f"aiodurabledict-test:{uuid.uuid4().hex}"
    async with sentinel_master(sentinels, service) as client:
        try:
            await client.set(key, "1", ex=60)
            assert await client.get(key) == "1"
        finally:
            await client.delete(key)


async def test_shared_zookeeper_ensemble_serves_a_write() -> None:
    """The shared ZooKeeper ensemble (AIODURABLEDICT_ZOOKEEPER_ENSEMBLE) takes a write."""
    connect_string = require_zookeeper_ensemble()
    path = f"/aiodurabledict-test-{uuid.uuid4().hex}"
    async with zookeeper_client(connect_string) as client:
        try:
            await client.create(path, data=b"1")
            assert await client.get_data(path) == b"1"
        finally:
            await client.delete(path)


def test_shared_engines_skip_without_their_variable_and_fail_when_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``require_*`` helpers of the engines skip when their variable is unset, fail with
    AIODURABLEDICT_REQUIRE_SERVERS=1, and skip when a listed node does not answer."""
    for variable in ("AIODURABLEDICT_REDIS_CLUSTER", "AIODURABLEDICT_REDIS_SENTINEL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("AIODURABLEDICT_ZOOKEEPER_ENSEMBLE", raising=False)
    monkeypatch.delenv(REQUIRE_SERVERS_ENV, raising=False)
    for require in (require_redis_cluster, require_redis_sentinel, require_zookeeper_ensemble):
        with pytest.raises(pytest.skip.Exception, match="is not set"):
            require()
    monkeypatch.setenv("AIODURABLEDICT_ZOOKEEPER_ENSEMBLE", f"127.0.0.1:{free_port()}")
    with pytest.raises(pytest.skip.Exception, match="does not answer"):
        require_zookeeper_ensemble()
    monkeypatch.setenv(REQUIRE_SERVERS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="does not answer"):
        require_zookeeper_ensemble()
