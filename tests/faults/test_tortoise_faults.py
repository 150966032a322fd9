"""The Tortoise store under faults: memcached flushed, evicted, stopped and frozen while writers go on;
PostgreSQL killed -9 and restarted under watchers, stalled behind a proxy; NOTIFY lost; SQLite locked
by another process.

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
from aiodurabledict.backends.tortoise import ModelDict
from aiodurabledict.backends.tortoise.marker import Mark, Marker
from aiodurabledict.testing.conformance import Factory, eventually
from tests.backends.tortoise_kit import app_context, backend_of, entries, notices_of
from tests.servers import MemcachedServer, PostgresServer, ServerError, unavailable
from tests.stores.tortoise import Setting, tortoise_store
from tests.wrappers import deaf, spied

pytestmark = pytest.mark.faults

# Small bounds so that outages are noticed (and tests end) quickly.
FAST: dict[str, Any] = {"heartbeat": 0.2, "timeout": 2.0, "poll_interval": 0.02}


def marker_of(d: AsyncDurableDict[Any]) -> Marker:
    marker = backend_of(d).marker
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
    """The marker ends at the database's commit (a check puts it back there)."""
    backend = backend_of(d)
    truth = await backend.load()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        seen = await marker_of(d).read()
        if seen is not None and seen.mark is not None and seen.mark.version == truth.version:
            assert seen.mark.token == truth.token
            return
        assert loop.time() < deadline, "the marker was not repaired"
        await backend.changes_since(d.version)
        await asyncio.sleep(0.05)


async def with_writers(
    tmp_path: Path, fault: Callable[[MemcachedServer, AsyncDurableDict[Any]], Awaitable[None]]
) -> None:
    async with (
        private_memcached() as server,
        tortoise_store(
            f"sqlite://{tmp_path / 'store.db'}", model=Setting, memcached=server.address, **FAST
        ) as make,
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
    """memcached stopped under running writers: checks fall back to the database; after a restart
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
    """A memcached call cut short (timeout or cancel) never lets the next call read its late reply:
    neither the marker's reads on their own connection nor its updates through the client's pool."""
    import aiomcache

    async with private_memcached() as server:
        client = aiomcache.Client("127.0.0.1", server.port, pool_size=1)
        marker = Marker(client, b"probe", timeout=0.05, backoff=0.0)
        try:
            await client.set(b"probe", b"1:a")
            await client.set(b"other", b"2")
            server.freeze()
            await asyncio.sleep(0.1)  # SIGSTOP has reached every thread
            assert await marker.read() is None  # timed out; the request is still queued
            assert not await marker.raise_to(Mark(2, "b"))  # so is this one, on the client's pool
            server.thaw()
            # The frozen requests' replies arrive now; a reused connection would hand them to us.
            assert await client.get(b"other") == b"2"
            await client.set(b"probe", b"3:c")
            seen = await marker.read()
            assert seen is not None
            assert seen.mark == Mark(3, "c")
        finally:
            server.thaw()
            marker.close()
            await client.close()


# -- PostgreSQL ----------------------------------------------------------------------------------


async def _write_until_it_lands(d: AsyncDurableDict[Any], key: str, value: Any) -> None:
    for _ in range(100):
        try:
            await d.set(key, value)
            return
        except BackendError:
            # The writer's pooled connections died with the server; the pool makes new ones.
            await asyncio.sleep(0.1)
    pytest.fail("the writer never wrote after the restart")


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_killed_and_restarted_under_watchers() -> None:
    """PostgreSQL killed -9 and restarted under three watchers sharing one LISTEN connection: they
    listen again, catch up with what was written meanwhile, follow later writes live, and end equal
    to the table."""
    async with (
        private_postgres() as server,
        tortoise_store(server.url, model=Setting, **FAST) as make,
        AsyncExitStack() as stack,
    ):
        watchers = [await stack.enter_async_context(await make(wrap=spied)) for _ in range(3)]
        writer = await stack.enter_async_context(await make(watch=False))
        await writer.set("before", 1)
        await eventually(lambda: all(w.view.get("before") == 1 for w in watchers))
        for round_ in range(2):
            await server.arestart(graceful=False)
            await _write_until_it_lands(writer, f"after{round_}", round_)
            await eventually(lambda r=round_: all(w.view.get(f"after{r}") == r for w in watchers))  # type: ignore[misc]
            await eventually(lambda: all(w.live for w in watchers))
        heard = [len(notices_of(w)) for w in watchers]
        for i in range(5):
            await writer.set(f"k{i}", i)
        # Pushed again: the watchers listen on a new connection.
        await eventually(lambda: all(len(notices_of(w)) > n for w, n in zip(watchers, heard, strict=True)))
        table = await entries(writer)
        assert table == {"before": 1, "after0": 0, "after1": 1, **{f"k{i}": i for i in range(5)}}
        await eventually(lambda: all(w == table and w.version == writer.version for w in watchers))


@pytest.mark.postgres
async def test_lost_notify_is_caught_by_polling() -> None:
    """With every NOTIFY lost and the heartbeat an hour away, polling at poll_interval brings each write."""
    async with (
        private_postgres() as server,
        tortoise_store(server.url, model=Setting, **FAST) as make,
        await make(heartbeat=3600, poll_interval=0.1, wrap=deaf) as reader,
        await make(watch=False) as writer,
    ):
        for i in range(5):
            await writer.set("k", i)
            await eventually(lambda: reader.view.get("k") == writer.view.get("k"), within=5)
        assert reader["k"] == 4


class StallingProxy:
    """A TCP proxy on loopback that can stop passing bytes (both ways, new connections too) while
    keeping every connection open: a network path that stalls, as a lost route or a full link does."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stall(self) -> None:
        self.flowing.clear()

    def flow(self) -> None:
        self.flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self.flowing.wait()
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.append(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            await self.flowing.wait()
            dst.write(data)
            await dst.drain()
        dst.close()


async def _within(seconds: float, call: Awaitable[Any]) -> Any:
    """``call``'s outcome when it ends within ``seconds``; the test fails otherwise (without waiting
    for whatever it is stuck in)."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        pytest.fail(f"the call did not end within {seconds} s")
    return task.result()


@pytest.mark.postgres
async def test_timeout_holds_while_the_network_stalls() -> None:
    """Behind a network path that stalls, get() and set() with timeout=2 end within their timeout:
    set() with BackendError, get() with the last known value. Once the path flows, writes land."""
    async with private_postgres() as server, StallingProxy("127.0.0.1", server.port) as proxy:
        url = f"postgres://postgres@127.0.0.1:{proxy.port}/postgres?minsize=1&maxsize=1"
        async with app_context(url), ModelDict(Setting, watch=False, timeout=2.0) as d:
            await d.set("k", 1)
            proxy.stall()
            try:
                with pytest.raises(BackendError, match="did not answer within 2 s"):
                    await _within(8, d.set("k", 2))
                await asyncio.sleep(1.1)  # past the fail-fast window: this get() asks the store
                assert await _within(8, d.get("k")) == 1
            finally:
                proxy.flow()
            await _write_until_it_lands(d, "k", 3)
            assert d["k"] == 3


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
            async with backend_of(d).client().acquire_connection() as conn:
                assert not conn.in_transaction
        async with await make(watch=False) as fresh:
            assert fresh["k"] == 3
            assert fresh.version == 2
