"""Redis Cluster and Sentinel failovers under live dicts, on PRIVATE engines (tests.servers):

- the master of the dict's slot is killed: watcher-only dicts (which never write) come back and
  converge by themselves (issue 8: on Cluster they stayed stale forever);
- a failover to a lagging replica loses acknowledged writes and the store moves on past the caches'
  versions: every dict ends equal to the store (the old code left 102-137 keys wrong per watcher).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

pytest.importorskip("redis")

from aiodurabledict import BackendError
from aiodurabledict.backends.redis import RedisDict
from aiodurabledict.testing.conformance import eventually
from tests.faults.redis_engines import ClusterEngine, Engine, SentinelEngine, opened, read_store

pytestmark = [pytest.mark.redis, pytest.mark.faults, pytest.mark.slow]

KEYSPACE = "engine-faults"
FAST: dict[str, Any] = {"heartbeat": 0.5, "timeout": 1.0}


@asynccontextmanager
async def private_engine(kind: str) -> AsyncIterator[Engine]:
    """A private Redis Cluster or Sentinel set, killed at the end."""
    try:
        from tests.servers import RedisClusterServers, RedisSentinelSet, ServerError
    except ImportError:
        pytest.skip("tests.servers has no Redis Cluster or Sentinel sets yet")
    group = RedisClusterServers() if kind == "cluster" else RedisSentinelSet()
    try:
        await group.astart()
    except ServerError as exc:
        group.close()
        pytest.fail(f"could not start a private {kind}: {exc}")
    try:
        yield ClusterEngine(group) if kind == "cluster" else SentinelEngine(group)
    finally:
        group.close()


async def write_until_done(d: RedisDict[Any], items: dict[str, Any]) -> None:
    """Write each item, retrying while the engine fails over (the outcome of a failed try is unknown,
    so the item is written again)."""
    for key, value in items.items():
        for _ in range(300):
            try:
                await d.set(key, value)
                break
            except BackendError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"could not write {key!r}")


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_watchers_come_back_after_the_master_is_killed(kind: str) -> None:
    """kill -9 of the master that holds the dict: dicts that only watch converge to the store by
    themselves, and are live again (subscribed to the new master), without any write of theirs."""
    async with private_engine(kind) as engine, AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(opened(engine.spec, KEYSPACE, **FAST)) for _ in range(3)]
        writer = await stack.enter_async_context(opened(engine.spec, KEYSPACE, watch=False, **FAST))
        await write_until_done(writer, {f"k{i}": i for i in range(20)})
        await eventually(lambda: all(w.live and len(w) == 20 for w in watchers), within=20)
        await engine.fail_over(KEYSPACE)
        await write_until_done(writer, {f"after{i}": i for i in range(20)})
        expected = await read_store(engine.spec, KEYSPACE)
        assert len(expected) == 40
        await eventually(lambda: all(w == expected for w in watchers), within=30)
        await eventually(lambda: all(w.live for w in watchers), within=30)
        # Live means subscribed to the new master: a new write arrives by notice.
        await write_until_done(writer, {"last": 1})
        await eventually(lambda: all(w.view.get("last") == 1 for w in watchers), within=10)


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_a_failover_to_a_lagging_replica_leaves_no_dict_wrong(kind: str) -> None:
    """The replica is cut off, the master acknowledges writes the replica never gets, then the
    replica takes over and new writes pass the caches' versions: every dict, watching or not, ends
    equal to the store, and the lost writes are gone from all of them."""
    async with private_engine(kind) as engine, AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(opened(engine.spec, KEYSPACE, **FAST)) for _ in range(3)]
        manual = await stack.enter_async_context(opened(engine.spec, KEYSPACE, watch=False, **FAST))
        writer = await stack.enter_async_context(opened(engine.spec, KEYSPACE, watch=False, **FAST))
        await write_until_done(writer, {f"k{i}": i for i in range(20)})
        await engine.lag(KEYSPACE)
        await write_until_done(writer, {f"lost{i}": i for i in range(30)})
        await eventually(lambda: all("lost29" in w for w in watchers), within=20)
        lost_at = max(w.version for w in watchers)
        await engine.take_over()
        other = await stack.enter_async_context(opened(engine.spec, KEYSPACE, watch=False, **FAST))
        await write_until_done(other, {f"new{i}": i for i in range(40)})
        assert other.version > lost_at
        expected = await read_store(engine.spec, KEYSPACE)
        assert not any(k.startswith("lost") for k in expected)
        await eventually(lambda: all(w == expected for w in watchers), within=30)
        for d in (manual, writer):
            for _ in range(100):
                try:
                    await d.sync()
                    break
                except BackendError:
                    await asyncio.sleep(0.1)
            assert d == expected
