"""The Tortoise store under faults: memcached flushed, evicted, stopped and frozen while writers go on;
PostgreSQL restarted under live dicts; NOTIFY lost.

memcached and PostgreSQL here are private servers each test starts on a free loopback port
(tests.servers); the SQLite file lives in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Self

import pytest

from aiodurabledict import AsyncDurableDict, BackendError
from aiodurabledict.backends.tortoise import TortoiseBackend, _Marker
from aiodurabledict.testing.conformance import Factory, eventually
from tests.notices import spy_notices
from tests.servers import MemcachedServer, PostgresServer, ServerError, unavailable
from tests.stores.tortoise import Setting, tortoise_store

pytestmark = pytest.mark.faults

# Small bounds so that outages are noticed (and tests end) quickly.
FAST: dict[str, Any] = {"heartbeat": 0.2, "timeout": 2.0, "poll_interval": 0.02}


def backend_of(d: AsyncDurableDict[Any]) -> TortoiseBackend:
    backend = d._backend
    assert isinstance(backend, TortoiseBackend)
    return backend


def marker_of(d: AsyncDurableDict[Any]) -> _Marker:
    marker = backend_of(d)._marker
    assert marker is not None
    return marker


@asynccontextmanager
async def private_memcached() -> AsyncIterator[MemcachedServer]:
    try:
        server = MemcachedServer()
    except ServerError as exc:
        unavailable(str(exc))
    with server:
        await server.astart()
        yield server


@asynccontextmanager
async def sqlite_with_memcached(tmp_path: Path, server: MemcachedServer) -> AsyncIterator[Factory]:
    async with tortoise_store(
        f"sqlite://{tmp_path / 'store.db'}", model=Setting, memcached=server.address, **FAST
    ) as make:
        yield make


class Writers:
    """Writer tasks that keep writing their own keys until stopped; ``expected`` is what they wrote last."""

    def __init__(self, dicts: list[AsyncDurableDict[Any]]) -> None:
        self.dicts = dicts
        self.expected: dict[str, int] = {}
        self.failures = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _write(self, n: int, d: AsyncDurableDict[Any]) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"w{n}/{i % 7}"
            try:
                await d.set(key, i)
            except BackendError:
                # The store itself is down: the write did not happen, try again shortly.
                self.failures += 1
            else:
                self.expected[key] = i
                i += 1
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> Self:
        self._tasks = [asyncio.create_task(self._write(n, d)) for n, d in enumerate(self.dicts)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def converged(reader: AsyncDurableDict[Any], writers: Writers, make: Factory) -> None:
    """The reader ends equal to the store, and the store holds every write that succeeded."""
    async with await make(watch=False) as fresh:
        content = dict(fresh.view)
        version = fresh.version
    assert content == writers.expected
    await eventually(lambda: dict(reader.view) == content and reader.version == version)


async def marker_repaired(d: AsyncDurableDict[Any]) -> None:
    """The marker ends at the database's version (a poll puts it back there)."""
    backend = backend_of(d)
    truth = (await backend.load()).version
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (await marker_of(d).read())[0] != truth:
        assert loop.time() < deadline, "the marker was not repaired"
        await backend.changes_since(d.version)
        await asyncio.sleep(0.05)


async def with_writers(
    tmp_path: Path, fault: Callable[[MemcachedServer, AsyncDurableDict[Any]], Awaitable[None]]
) -> None:
    async with (
        private_memcached() as server,
        sqlite_with_memcached(tmp_path, server) as make,
        AsyncExitStack() as stack,
    ):
        reader = await stack.enter_async_context(await make())
        writers = [await stack.enter_async_context(await make(watch=False)) for _ in range(3)]
        async with Writers(writers) as running:
            await asyncio.sleep(0.3)
            await fault(server, reader)
            await asyncio.sleep(0.3)
        await converged(reader, running, make)
        await marker_repaired(reader)


async def test_memcached_flushed_while_writing(tmp_path: Path) -> None:
    """flush_all under running writers: nothing is lost, every cache converges, the marker comes back."""

    async def flush(server: MemcachedServer, reader: AsyncDurableDict[Any]) -> None:
        client = marker_of(reader).client
        for _ in range(5):
            await client.flush_all()
            await asyncio.sleep(0.05)

    await with_writers(tmp_path, flush)


async def test_memcached_evicted_while_writing(tmp_path: Path) -> None:
    """The marker deleted (evicted) again and again under running writers: nothing is lost."""

    async def evict(server: MemcachedServer, reader: AsyncDurableDict[Any]) -> None:
        marker = marker_of(reader)
        for _ in range(10):
            await marker.client.delete(marker.key)
            await asyncio.sleep(0.02)

    await with_writers(tmp_path, evict)


async def test_memcached_stopped_while_writing(tmp_path: Path) -> None:
    """memcached stopped under running writers: polls fall back to the database; after a restart
    (empty) the marker is set again from the database, never guessed."""

    async def stop(server: MemcachedServer, reader: AsyncDurableDict[Any]) -> None:
        await server.astop()
        before = reader.version
        await eventually(lambda: reader.version > before + 5, message="the reader stopped following")
        await server.astart()

    await with_writers(tmp_path, stop)


async def test_memcached_frozen_then_thawed(tmp_path: Path) -> None:
    """A frozen memcached costs bounded waits, and after it thaws no call reads another call's reply."""

    async def freeze(server: MemcachedServer, reader: AsyncDurableDict[Any]) -> None:
        server.freeze()
        try:
            before = reader.version
            await eventually(lambda: reader.version > before + 5, message="the reader stopped following")
            assert marker_of(reader).failures > 0
        finally:
            server.thaw()

    await with_writers(tmp_path, freeze)


async def test_cancelled_memcached_call_leaves_no_reply_behind() -> None:
    """A memcached call cut short (timeout or cancel) never lets the next call read its late reply."""
    import aiomcache

    async with private_memcached() as server:
        client = aiomcache.Client("127.0.0.1", server.port, pool_size=1)
        try:
            marker = _Marker(client, b"probe", timeout=0.05, backoff=0.0)
            await client.set(b"probe", b"1")
            await client.set(b"other", b"2")
            server.freeze()
            await asyncio.sleep(0.1)  # SIGSTOP has reached every thread
            assert await marker.read() == (None, None)  # timed out; the request is still queued
            server.thaw()
            # The frozen request's reply ("1") arrives now; a reused connection would hand it to us.
            assert await client.get(b"other") == b"2"
            assert (await marker.read())[0] == 1
        finally:
            server.thaw()
            await client.close()


# -- PostgreSQL ----------------------------------------------------------------------------------


@asynccontextmanager
async def private_postgres() -> AsyncIterator[PostgresServer]:
    try:
        server = PostgresServer()
    except ServerError as exc:
        unavailable(str(exc))
    with server:
        try:
            await server.astart()
        except ServerError as exc:
            unavailable(f"could not start a private PostgreSQL: {exc}")
        yield server


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_restart_under_live_dicts() -> None:
    """PostgreSQL restarted: the watcher re-LISTENs, catches up, and follows writes made after it."""
    async with (
        private_postgres() as server,
        tortoise_store(server.url, model=Setting, **FAST) as make,
        await make() as reader,
        await make(watch=False) as writer,
    ):
        await writer.set("before", 1)
        await eventually(lambda: reader.view.get("before") == 1)
        await server.arestart(graceful=False)
        for _ in range(50):
            try:
                await writer.set("after", 2)
                break
            except BackendError:
                # The writer's pooled connections died with the server; the pool makes new ones.
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the writer never wrote after the restart")
        await eventually(lambda: reader.view.get("after") == 2)
        await eventually(lambda: reader.status.connected)
        notices = spy_notices(reader)
        for i in range(5):
            await writer.set(f"k{i}", i)
        await eventually(lambda: reader.version == writer.version)
        # Pushed again: the watcher listens on a new connection.
        await eventually(lambda: bool(notices))
        assert dict(reader.view) == {"before": 1, "after": 2, **{f"k{i}": i for i in range(5)}}


@pytest.mark.postgres
async def test_lost_notify_is_caught_by_polling() -> None:
    """With every NOTIFY lost and the heartbeat an hour away, polling at poll_interval brings each write."""
    async with (
        private_postgres() as server,
        tortoise_store(server.url, model=Setting, **FAST) as make,
        await make(heartbeat=3600, poll_interval=0.1) as reader,
        await make(watch=False) as writer,
    ):
        backend_of(writer)._publish = False
        notices = spy_notices(reader)
        for i in range(5):
            await writer.set("k", i)
            await eventually(lambda: reader.view.get("k") == writer.view.get("k"), within=5)
        assert reader["k"] == 4
        assert notices == []


# -- SQLite ---------------------------------------------------------------------------------------


async def test_sqlite_write_cut_short_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    """A write that times out waiting for another writer's lock leaves the application's connection
    outside any transaction, writes nothing, and the next write (once the lock is free) lands."""
    path = tmp_path / "store.db"
    async with tortoise_store(f"sqlite://{path}", model=Setting) as make:
        async with await make(watch=False, timeout=0.3) as d:
            await d.set("k", 1)
            other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                other.execute("BEGIN IMMEDIATE")
                with pytest.raises(BackendError):
                    await d.set("k", 2)
                assert d["k"] == 1
            finally:
                other.execute("ROLLBACK")
                other.close()
            # The BEGIN left waiting in aiosqlite's thread completes now, and the ROLLBACK queued
            # behind it undoes it before this write begins.
            await d.set("k", 3)
            client: Any = backend_of(d)._client()
            assert not client._connection.in_transaction
        async with await make(watch=False) as fresh:
            assert fresh["k"] == 3
            assert fresh.version == 2
