"""Redis Cluster and Redis Sentinel for the conformance suite: the shared engines that
``scripts/servers.sh start`` runs (addresses in AIODURABLEDICT_REDIS_CLUSTER and
AIODURABLEDICT_REDIS_SENTINEL), plain and with every notice lost.

Each dict a factory makes has a client of its own (as another process would), on one fresh keyspace
per test; the keyspace's keys are deleted and the clients closed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aiodurabledict import AsyncDurableDict
from aiodurabledict.testing.conformance import Factory
from tests.servers import require_redis_cluster, require_redis_sentinel
from tests.wrappers import deaf

_PARTS = ("data", "version", "log", "horizon", "token", "tokens")


def _pairs(addresses: list[str]) -> list[tuple[str, int]]:
    return [(host, int(port)) for host, _, port in (a.rpartition(":") for a in addresses)]


def cluster_client(**options: Any) -> Any:
    """A new ``RedisCluster`` client of the shared cluster."""
    from redis.asyncio import RedisCluster
    from redis.asyncio.cluster import ClusterNode

    nodes = [ClusterNode(host, port) for host, port in _pairs(require_redis_cluster())]
    return RedisCluster(startup_nodes=nodes, **options)


def sentinel_client(**options: Any) -> tuple[Any, list[Any]]:
    """A new client of the shared Sentinel service's master, and the sentinels' clients to close."""
    from redis.asyncio.sentinel import Sentinel

    sentinels, service = require_redis_sentinel()
    sentinel = Sentinel(_pairs(sentinels), **options)  # type: ignore[no-untyped-call, unused-ignore]
    return sentinel.master_for(service), list(sentinel.sentinels)


@asynccontextmanager
async def engine_keyspace(
    new_client: Callable[[], tuple[Any, list[Any]]],
) -> AsyncIterator[tuple[str, list[Any]]]:
    """A fresh keyspace on an engine and a list of clients to close; deletes the keyspace after."""
    pytest.importorskip("redis")
    admin, helpers = new_client()
    keyspace = f"test:{uuid.uuid4().hex}"
    clients: list[Any] = [admin, *helpers]
    try:
        yield keyspace, clients
    finally:
        try:
            await admin.delete(*(f"{{{keyspace}}}:{part}" for part in _PARTS))
        finally:
            for client in clients:
                await client.aclose()


def _engine(new_client: Callable[[], tuple[Any, list[Any]]], *, lossy: bool = False) -> Any:
    @asynccontextmanager
    async def factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
        from aiodurabledict.backends.redis import RedisBackend

        async with engine_keyspace(new_client) as (keyspace, clients):

            async def make(**opts: Any) -> AsyncDurableDict[Any]:
                client, helpers = new_client()
                clients.extend([client, *helpers])
                backend = RedisBackend(keyspace, client)
                opts.setdefault("heartbeat", 0.2 if lossy else 2.0)
                return AsyncDurableDict(deaf(backend) if lossy else backend, **opts)

            yield make

    return factory


def _cluster() -> tuple[Any, list[Any]]:
    return cluster_client(), []


PARAMS = [
    pytest.param(_engine(_cluster), id="redis-cluster", marks=pytest.mark.redis),
    pytest.param(_engine(_cluster, lossy=True), id="redis-cluster-lossy", marks=pytest.mark.redis),
    pytest.param(_engine(sentinel_client), id="redis-sentinel", marks=pytest.mark.redis),
]
