"""Redis killed, restarted and frozen under a live dict; notices lost; writers racing.

Each test runs its own private redis-server (tests.servers.RedisServer) on a free loopback port.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import pytest

pytest.importorskip("redis")

from redis.asyncio import Redis

from aiodurabledict import AsyncDurableDict, BackendError, EncodeError
from aiodurabledict.backends.redis import RedisBackend, RedisDict
from aiodurabledict.testing.conformance import eventually
from tests.servers import RedisServer, ServerError, unavailable
from tests.wrappers import deaf

pytestmark = [pytest.mark.redis, pytest.mark.faults]

T = TypeVar("T")

KEYSPACE = "faults"
# Small bounds so that outages are noticed (and tests end) quickly.
FAST: dict[str, Any] = {"heartbeat": 0.2, "timeout": 1.0}


@asynccontextmanager
async def private_redis(*, persistent: bool = False) -> AsyncIterator[tuple[RedisServer, list[Redis]]]:
    """A private Redis and a list of clients (closed at the end) made by ``client()``."""
    try:
        server = RedisServer(persistent=persistent)
    except ServerError as exc:  # redis-server missing
        unavailable(str(exc))
    async with server:
        clients: list[Redis] = []
        try:
            yield server, clients
        finally:
            for client in clients:
                await client.aclose()


def client(server: RedisServer, clients: list[Redis]) -> Redis:
    """A client of its own (as another process would have), closed by ``private_redis``."""
    made = Redis.from_url(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    clients.append(made)
    return made


async def store_content(server: RedisServer, clients: list[Redis]) -> dict[str, Any]:
    async with RedisDict[Any](KEYSPACE, client(server, clients), watch=False) as fresh:
        return dict(fresh.view)


async def test_kill_and_restart_loses_nothing() -> None:
    """kill -9 and restart while another client writes: every acknowledged write survives and the
    watching cache converges to exactly the store's content."""
    async with private_redis(persistent=True) as (server, clients):
        acknowledged: dict[str, int] = {}
        failures = 0
        async with (
            RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as reader,
            RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as writer,
        ):

            async def write(count: int) -> None:
                nonlocal failures
                for i in range(count):
                    try:
                        await writer.set(f"k{i}", i)
                        acknowledged[f"k{i}"] = i
                    except BackendError:
                        failures += 1
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.005)

            writing = asyncio.create_task(write(400))
            await asyncio.sleep(0.3)
            killed = server.pid
            server.kill()
            await asyncio.sleep(0.5)
            await server.astart()
            await writing
            await eventually(lambda: reader.status.connected, within=20)
            content = await store_content(server, clients)
            assert all(content.get(k) == v for k, v in acknowledged.items())
            await eventually(lambda: dict(reader.view) == content, within=20)
            assert server.pid != killed
            assert len(acknowledged) + failures == 400


async def test_restart_without_persistence_reloads_what_was_rewritten() -> None:
    """kill -9 of a Redis that keeps nothing, then new writes: the cache drops the lost keys and holds
    exactly what the store holds, though its old version looked newer than the store's count."""
    async with (
        private_redis(persistent=False) as (server, clients),
        RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as reader,
        RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as writer,
    ):
        await writer.update({"a": 1, "b": 1})
        await eventually(lambda: dict(reader.view) == {"a": 1, "b": 1})
        server.kill()
        await server.astart()
        for _ in range(200):  # until the writer's client has reconnected
            try:
                await writer.update({"b": 2, "c": 3})
                break
            except BackendError:
                await asyncio.sleep(0.05)
        content = await store_content(server, clients)
        assert content == {"b": 2, "c": 3}
        await eventually(lambda: dict(reader.view) == content, within=20)


async def test_frozen_server_is_reported_then_recovered() -> None:
    """SIGSTOP: status turns disconnected (within heartbeat + timeout) while reads serve the cache;
    SIGCONT: the watcher reconnects and the cache catches up."""
    async with (
        private_redis() as (server, clients),
        RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as d,
        RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as writer,
    ):
        await writer.set("a", 1)
        await eventually(lambda: d.view.get("a") == 1 and d.status.connected)
        server.freeze()
        try:
            await eventually(lambda: not d.status.connected, within=15)
            assert d["a"] == 1
            assert d.status.stale_since is not None
        finally:
            server.thaw()
        await writer.set("a", 2)
        await eventually(lambda: d.view.get("a") == 2 and d.status.connected, within=15)


async def test_heartbeat_converges_without_notices() -> None:
    """A reader that hears no notice (every one lost) still converges by its heartbeat."""
    async with (
        private_redis() as (server, clients),
        AsyncDurableDict[Any](deaf(RedisBackend(KEYSPACE, client(server, clients))), **FAST) as d,
        RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as writer,
    ):
        await eventually(lambda: d.status.connected)
        for i in range(20):
            await writer.set(f"k{i}", i)
        await writer.delete("k3")
        expected = {f"k{i}": i for i in range(20) if i != 3}
        await eventually(lambda: dict(d.view) == expected)


async def test_killed_subscription_resubscribes_and_catches_up() -> None:
    """CLIENT KILL TYPE pubsub drops the watcher's subscription; it resubscribes and misses nothing."""
    async with private_redis() as (server, clients):
        admin = client(server, clients)
        async with (
            RedisDict[Any](KEYSPACE, client(server, clients), heartbeat=30.0) as d,
            RedisDict[Any](KEYSPACE, client(server, clients)) as writer,
        ):
            channel = "{faults}:notices:0"
            for round_ in range(3):
                for _ in range(500):  # both watchers (re)subscribed
                    if (await admin.pubsub_numsub(channel))[0][1] == 2:
                        break
                    await asyncio.sleep(0.01)
                assert await admin.client_kill_filter(_type="pubsub") == 2
                await writer.set(f"k{round_}", round_)  # may be published while nobody listens
            # The heartbeat is 30 s: only the resubscribe's own check can bring these in.
            await eventually(lambda: dict(d.view) == {"k0": 0, "k1": 1, "k2": 2}, within=20)
            await eventually(lambda: d.status.connected)


async def test_racing_writers_converge_to_the_store() -> None:
    """8 writers over 4 dicts, with subscriptions killed mid-race: every dict ends equal to the store."""
    async with private_redis() as (server, clients):
        admin = client(server, clients)
        async with AsyncExitStack() as stack:
            dicts = [
                await stack.enter_async_context(RedisDict[Any](KEYSPACE, client(server, clients), **FAST))
                for _ in range(4)
            ]

            async def writer(n: int) -> None:
                rng = random.Random(n)
                d = dicts[n % 4]
                for i in range(60):
                    key = f"k{rng.randrange(12)}"
                    op = rng.random()
                    if op < 0.6:
                        await d.set(key, [n, i])
                    elif op < 0.8:
                        await d.pop(key, None)
                    elif op < 0.95:
                        await d.setdefault(key, [n, i])
                    else:
                        await d.update({key: [n, i], f"u{n}": i})

            async def saboteur() -> None:
                for _ in range(3):
                    await asyncio.sleep(0.05)
                    await admin.client_kill_filter(_type="pubsub")

            await asyncio.gather(*(writer(n) for n in range(8)), saboteur())
            content = await store_content(server, clients)
            for d in dicts:
                await eventually(lambda d=d: dict(d.view) == content, within=20)  # type: ignore[misc]
            versions = {d.version for d in dicts}
            assert versions == {int(await admin.get("{faults}:version") or 0)}


async def test_unencodable_value_writes_nothing() -> None:
    """A value the codec refuses raises EncodeError and leaves the store's version untouched."""
    async with private_redis() as (server, clients):
        admin = client(server, clients)
        async with RedisDict[Any](KEYSPACE, client(server, clients)) as d:
            await d.set("a", 1)
            version = await admin.get("{faults}:version")
            with pytest.raises(EncodeError):
                await d.set("b", object())
            with pytest.raises(EncodeError):
                await d.update({"c": 1, "d": {1, 2}})
            assert await admin.get("{faults}:version") == version
            assert await admin.hkeys("{faults}:data") == [b"a"]


async def test_cancelled_writes_on_a_paused_server_leave_clients_consistent() -> None:
    """Writes cancelled while Redis holds them (CLIENT PAUSE) never leave a stray reply behind."""
    async with private_redis() as (server, clients):
        admin = client(server, clients)
        shared = client(server, clients)
        backend = RedisBackend(KEYSPACE, shared)
        await backend.start()
        for i in range(5):
            await admin.client_pause(200, all=False)
            task = asyncio.create_task(backend.set(f"k{i}", b"%d" % i))
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled()
            assert await shared.get("{faults}:nothing") is None
            assert await shared.ping() is True
        await asyncio.sleep(0.25)
        # A cancelled script may still have run once Redis resumed: whatever landed is consistent.
        loaded = await backend.load()
        since_zero = await backend.changes_since(0)
        assert (since_zero.version, since_zero.changes, since_zero.token) == (
            loaded.version,
            loaded.changes,
            loaded.token,
        )


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, again while the store is coming back (a client's first call after a restart
    finds its connection closed)."""
    for _ in range(100):
        try:
            return await call()
        except BackendError:
            await asyncio.sleep(0.05)
    return await call()


class _SnapshotRedis(RedisServer):
    """A private Redis that keeps its RDB file across restarts (``SAVE`` writes it; nothing else
    does), so that a test can put an older snapshot back before starting it again."""

    def _prepare(self) -> None:
        """Keep ``dump.rdb``: it is the state the next start loads."""


async def test_restart_from_an_older_snapshot_converges_every_dict() -> None:
    """SAVE, more writes, kill -9, the old dump file put back, restart, then writes past the caches'
    version: every dict ends equal to the store (the tokens tell the two histories apart), the
    watching ones by themselves, the manual one at its next sync(), the writer at its next write."""
    try:
        server = _SnapshotRedis()
    except ServerError as exc:
        unavailable(str(exc))
    async with server:
        clients: list[Redis] = []
        try:
            async with (
                RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as watching,
                RedisDict[Any](KEYSPACE, client(server, clients), **FAST) as other_watching,
                RedisDict[Any](KEYSPACE, client(server, clients), watch=False) as manual,
                RedisDict[Any](KEYSPACE, client(server, clients), watch=False, **FAST) as writer,
            ):
                await writer.update({f"k{i}": i for i in range(10)})
                admin = client(server, clients)
                await admin.save()
                snapshot = (server.dir / "dump.rdb").read_bytes()
                for i in range(10):
                    await writer.set(f"lost{i}", i)
                await manual.sync()
                await eventually(lambda: "lost9" in watching and "lost9" in other_watching)
                lost_at = watching.version
                server.kill()
                (server.dir / "dump.rdb").write_bytes(snapshot)
                await server.astart()
                store = RedisDict[Any](KEYSPACE, client(server, clients), watch=False, **FAST)
                async with store:
                    for i in range(15):  # more commits than were lost: versions pass the caches'
                        await retrying(lambda i=i: store.set(f"new{i}", i))  # type: ignore[misc]
                    assert store.version > lost_at
                expected = {**{f"k{i}": i for i in range(10)}, **{f"new{i}": i for i in range(15)}}
                assert await store_content(server, clients) == expected
                await eventually(lambda: watching == expected and other_watching == expected, within=20)
                assert await retrying(manual.sync) is True
                assert manual == expected
                await retrying(lambda: writer.set("after", 1))
                assert writer == {**expected, "after": 1}
        finally:
            for made in clients:
                await made.aclose()


async def test_a_dict_opens_on_its_snapshot_while_redis_is_down_and_goes_live_when_it_returns(
    tmp_path: Any,
) -> None:
    """snapshot= on a real Redis: the server is stopped, a new dict opens anyway on the snapshot's
    values (interrupted), then takes the store's content (a key the snapshot lacks included, a key
    the store lost dropped) and goes live once the server is back."""
    snapshot = tmp_path / "settings.snapshot"
    async with private_redis(persistent=True) as (server, clients):
        async with RedisDict[Any](KEYSPACE, client(server, clients), snapshot=str(snapshot), **FAST) as d:
            await d.update({"kept": 1, "dropped": 2})
        await server.astop()
        d = RedisDict[Any](KEYSPACE, client(server, clients), snapshot=str(snapshot), **FAST)
        async with d:
            assert dict(d.view) == {"kept": 1, "dropped": 2}
            assert d.status.state.value == "interrupted"
            await server.astart()
            async with RedisDict[Any](KEYSPACE, client(server, clients), watch=False, **FAST) as other:
                await other.set("added", 3)
                await other.delete("dropped")
            await d.wait_live(timeout=20)
            await eventually(lambda: dict(d.view) == {"kept": 1, "added": 3}, within=20)


async def test_bootstrap_values_serve_while_redis_is_down_and_give_way_to_the_store() -> None:
    """bootstrap= on a real Redis that is down at open: the defaults serve, then the store's values
    replace them entirely when it answers."""
    async with private_redis() as (server, clients):
        await server.astop()
        d = RedisDict[Any](KEYSPACE, client(server, clients), bootstrap={"limit": 100, "beta": False}, **FAST)
        async with d:
            assert d["limit"] == 100
            assert d.status.state.value == "interrupted"
            await server.astart()
            async with RedisDict[Any](KEYSPACE, client(server, clients), watch=False, **FAST) as writer:
                await writer.set("limit", 10)
            await d.wait_live(timeout=20)
            await eventually(lambda: dict(d.view) == {"limit": 10}, within=20)
