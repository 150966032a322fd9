"""What only the ZooKeeper store has: key escaping, the stamp and change log, request counts, limits."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aiodurabledict import ValueTooLargeError
from aiodurabledict._backend import Delta
from aiodurabledict.backends import zookeeper
from aiodurabledict.backends.zookeeper import (
    MAX_VALUE_BYTES,
    ZookeeperBackend,
    ZookeeperDict,
    close_client,
    escape_key,
    unescape_key,
)
from tests.stores.zookeeper import ZOOKEEPER, delete_tree, start_client, zookeeper_znode

pytestmark = pytest.mark.zookeeper

ODD_KEYS = [
    "/",
    "a/b/c",
    "/leading",
    "trailing/",
    ".",
    "..",
    ".hidden",
    "zookeeper",
    "%",
    "%2E",
    "a b",
    "~tilde",
    "über",
    "日本語",
    "emoji 🎉",
    "new\nline",
    "k" * 300,
]


@asynccontextmanager
async def znode() -> AsyncIterator[tuple[str, Callable[[], Any]]]:
    """A fresh path and a maker of started clients (each closed afterwards)."""
    async with zookeeper_znode() as (path, clients):

        async def client() -> Any:
            made = await start_client()
            clients.append(made)
            return made

        yield path, client


class Counter:
    """Counts the requests a client sends (one multiRead or multi is one)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        self._send = client.send
        client.send = self._counted

    async def _counted(self, request: Any) -> Any:
        self.count += 1
        return await self._send(request)

    def reset(self) -> None:
        self.count = 0


def test_escaping_round_trips_and_makes_valid_names() -> None:
    """Every key escapes to a single legal znode name that unescapes to the same key."""
    for key in ODD_KEYS:
        name = escape_key(key)
        assert "/" not in name
        assert name not in (".", "..")
        assert not name.startswith(".")
        assert unescape_key(name) == key


def test_foreign_names_are_not_keys() -> None:
    """Children that quoting would not produce (our own .log, other tools' nodes) are not keys."""
    for name in (".log", "a b", "%zz", "%2e", "%41", "", "%C3", "x%2Ey"):
        assert unescape_key(name) is None
    assert unescape_key("%2Ex") == ".x"


def test_keyspace_must_be_an_absolute_path() -> None:
    """Relative paths, the root, /zookeeper and dot segments are refused before any I/O."""
    for bad in ("settings", "/", "", "/zookeeper/x", "/a/../b", "/a/./b"):
        with pytest.raises(ValueError, match="keyspace"):
            ZookeeperBackend(bad, object())


async def test_odd_keys_round_trip_through_the_tree() -> None:
    """Keys with "/", dots, unicode and "zookeeper" are stored one node each and read back elsewhere."""
    async with znode() as (path, client):
        writer_client, reader_client = await client(), await client()
        async with ZookeeperDict[Any](path, writer_client, watch=False) as writer:
            for i, key in enumerate(ODD_KEYS):
                await writer.set(key, i)
        children = await writer_client.get_children(path)
        assert sorted(c for c in children if not c.startswith(".")) == sorted(escape_key(k) for k in ODD_KEYS)
        async with ZookeeperDict[Any](path, reader_client, watch=False) as reader:
            assert dict(reader.view) == {key: i for i, key in enumerate(ODD_KEYS)}


async def test_foreign_children_are_ignored() -> None:
    """A node another tool made under the dict (a name quoting would not give) is not a key."""
    async with znode() as (path, client):
        zk = await client()
        async with ZookeeperDict[Any](path, zk, watch=False) as d:
            await d.set("real", 1)
            await zk.create(f"{path}/not a key", b"1")
            await d.clear()
            await d.set("again", 2)
        async with ZookeeperDict[Any](path, zk, watch=False) as d:
            assert dict(d.view) == {"again": 2}


async def test_oversize_value_is_refused_before_sending() -> None:
    """A value over max_value_bytes raises ValueTooLargeError and nothing is written."""
    async with znode() as (path, client):
        zk = await client()
        async with ZookeeperDict[Any](path, zk, watch=False) as d:
            await d.set("small", 1)
            _, before = await zk.get(path)
            with pytest.raises(ValueTooLargeError):
                await d.set("big", "x" * MAX_VALUE_BYTES)
            _, after = await zk.get(path)
            assert after.version == before.version
            assert "big" not in d
            assert not await zk.exists(f"{path}/big")


async def test_largest_value_is_written() -> None:
    """A value of exactly max_value_bytes fits in one request and reads back whole."""
    async with znode() as (path, client):
        zk = await client()
        value = "x" * (MAX_VALUE_BYTES - 2)  # JSON adds the quotes
        async with ZookeeperDict[Any](path, zk, watch=False) as d:
            await d.set("big", value)
        async with ZookeeperDict[Any](path, await client(), watch=False) as d:
            assert d["big"] == value


async def test_oversize_batch_is_refused_whole() -> None:
    """An update whose values fit one by one but not in one transaction writes nothing."""
    async with znode() as (path, client):
        zk = await client()
        backend = ZookeeperBackend(path, zk)
        await backend.start()
        half = b"x" * (zookeeper.MAX_REQUEST_BYTES // 2 + 1024)
        with pytest.raises(ValueTooLargeError):
            await backend.update({"a": half, "b": half})
        assert sorted(await zk.get_children(path)) == [".log"]


async def test_open_pipelines_the_reads() -> None:
    """Loading N keys takes one listing plus one multiRead per 200 keys, whatever N."""
    async with znode() as (path, client):
        zk = await client()
        backend = ZookeeperBackend(path, zk)
        await backend.start()
        n = 1000
        for start in range(0, n, 250):
            await backend.update({f"k{i}": b"1" for i in range(start, start + 250)})
        counter = Counter(zk)
        delta = await backend.load()
        assert len(delta.changes) == n
        assert delta.full
        assert counter.count == 1 + math.ceil(n / zookeeper._READ_CHUNK)


@pytest.mark.parametrize("n", [10, 600])
async def test_changes_since_is_flat_in_n(n: int) -> None:
    """Unchanged or one small write since: one request; one large write: two; several writes: four."""
    async with znode() as (path, client):
        mine, theirs = ZookeeperBackend(path, await client()), ZookeeperBackend(path, await client())
        await mine.start()
        await theirs.update({f"k{i}": b"1" for i in range(n)})
        version = (await mine.load()).version
        counter = Counter(mine._client)

        assert (await mine.changes_since(version)).changes == {}
        assert counter.count == 1

        counter.reset()
        await theirs.set("k1", b"2")
        delta = await mine.changes_since(version)
        assert delta.changes == {"k1": b"2"}
        assert delta.prev == version
        assert counter.count == 1
        version = delta.version

        counter.reset()
        large = b"x" * (zookeeper._INLINE_LIMIT + 1)
        await theirs.set("k1", large)
        delta = await mine.changes_since(version)
        assert delta.changes == {"k1": large}
        assert counter.count == 2
        version = delta.version

        counter.reset()
        await theirs.set("k2", b"3")
        await theirs.pop("k3")
        delta = await mine.changes_since(version)
        assert delta.changes == {"k2": b"3", "k3": None}
        assert counter.count == 4


async def test_changes_since_reloads_when_the_log_is_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the log no longer reaches back to the version, the answer is a full reload."""
    monkeypatch.setattr(zookeeper, "_LOG_KEEP", 2)
    monkeypatch.setattr(zookeeper, "_TRIM_EVERY", 1)
    async with znode() as (path, client):
        mine, theirs = ZookeeperBackend(path, await client()), ZookeeperBackend(path, await client())
        await mine.start()
        await theirs.update({"a": b"1", "b": b"1"})
        version = (await mine.load()).version
        for i in range(6):
            await theirs.set("a", str(i).encode())
        await theirs.pop("b")
        delta = await mine.changes_since(version)
        assert delta.full
        assert delta.changes == {"a": b"5"}


async def test_every_write_is_one_transaction_with_stamp_and_log() -> None:
    """update of many keys raises the stamp's write count by one and logs one entry naming them all."""
    async with znode() as (path, client):
        zk = await client()
        backend = ZookeeperBackend(path, zk)
        await backend.start()
        _, before = await zk.get(path)
        counter = Counter(zk)
        delta = await backend.update({f"k/{i}": b"v" for i in range(50)})
        assert counter.count == 1
        data, after = await zk.get(path)
        assert after.version == before.version + 1
        assert delta.version == after.last_modified_zxid
        assert set(data.decode().split("/")) == {escape_key(f"k/{i}") for i in range(50)}
        entries = await zk.get_children(f"{path}/.log")
        assert len(entries) == 1
        assert await zk.get_data(f"{path}/.log/{entries[0]}") == data


async def test_update_retries_with_create_or_set_as_each_node_needs() -> None:
    """update over keys another client created or deleted behind our back still lands whole."""
    async with znode() as (path, client):
        mine, theirs = ZookeeperBackend(path, await client()), ZookeeperBackend(path, await client())
        await mine.start()
        await mine.update({"a": b"1", "b": b"1"})
        await theirs.pop("a")
        await theirs.set("c", b"1")
        await mine.update({"a": b"2", "b": b"2", "c": b"2"})
        assert (await theirs.load()).changes == {"a": b"2", "b": b"2", "c": b"2"}


async def test_setdefault_creates_once_across_clients() -> None:
    """Of many clients racing setdefault, one creates the node and all return its value."""
    async with znode() as (path, client):
        backends = [ZookeeperBackend(path, await client()) for _ in range(6)]
        await backends[0].start()
        results = await asyncio.gather(*(b.setdefault("k", str(i).encode()) for i, b in enumerate(backends)))
        assert len({raw for _, raw in results}) == 1
        assert len({delta.version for delta, _ in results}) == 1
        _, stat = await backends[0]._client.get(path)
        assert stat.version == 1


async def test_pop_deletes_only_the_version_it_read() -> None:
    """pop returns what it deleted; a missing key writes nothing; racing pops return it once."""
    async with znode() as (path, client):
        backends = [ZookeeperBackend(path, await client()) for _ in range(5)]
        await backends[0].start()
        await backends[0].set("k", b"v")
        results = await asyncio.gather(*(b.pop("k") for b in backends))
        popped = [r for r in results if r is not None]
        assert len(popped) == 1
        assert popped[0][1] == b"v"
        _, before = await backends[0]._client.get(path)
        assert await backends[0].pop("k") is None
        _, after = await backends[0]._client.get(path)
        assert after.version == before.version


async def test_clear_removes_exactly_the_keys_present() -> None:
    """clear deletes every key node in one guarded transaction; the log and stamp stay."""
    async with znode() as (path, client):
        zk = await client()
        backend = ZookeeperBackend(path, zk)
        await backend.start()
        await backend.update({f"k{i}": b"1" for i in range(30)})
        delta = await backend.clear()
        assert delta.changes == {f"k{i}": None for i in range(30)}
        assert await zk.get_children(path) == [".log"]
        _, stat = await zk.get(path)
        assert delta.version == stat.last_modified_zxid


async def test_writes_recreate_a_deleted_tree() -> None:
    """When another tool deletes the dict's node, the next write recreates node and log."""
    async with znode() as (path, client):
        zk = await client()
        async with ZookeeperDict[Any](path, zk, watch=False) as d:
            await d.set("a", 1)
            await delete_tree(zk, path)
            await d.set("b", 2)
        async with ZookeeperDict[Any](path, await client(), watch=False) as d:
            assert dict(d.view) == {"b": 2}


async def test_notices_follow_the_tree_one_after_another() -> None:
    """Each notice's prev is the previous notice's version; together they carry every write."""
    async with znode() as (path, client):
        mine, theirs = ZookeeperBackend(path, await client()), ZookeeperBackend(path, await client())
        await mine.start()
        baseline = (await mine.load()).version
        seen: list[Delta] = []
        async with mine.subscribe() as notices:
            for i in range(20):
                await theirs.set(f"k{i % 3}", str(i).encode())
            await theirs.pop("k0")

            async def collect() -> None:
                async for notice in notices:
                    seen.append(notice)
                    if notice.changes.get("k0", b"") is None:
                        return

            await asyncio.wait_for(collect(), 10)
        assert all(n.complete for n in seen)
        assert seen[0].prev == baseline
        for before, after in itertools.pairwise(seen):
            assert after.prev == before.version
        final: dict[str, bytes | None] = {}
        for n in seen:
            final.update(n.changes)
        assert final == {"k0": None, "k1": b"19", "k2": b"17"}


async def test_own_writes_need_no_fetch_to_be_noticed() -> None:
    """The subscription answers a write this backend made from what it wrote: one stamp read."""
    async with znode() as (path, client):
        zk = await client()
        backend = ZookeeperBackend(path, zk)
        await backend.start()
        await backend.load()
        async with backend.subscribe() as notices:
            written = await backend.set("k", b"v")
            counter = Counter(zk)
            notice = await asyncio.wait_for(anext(notices), 5)
        assert notice.version == written.version
        assert notice.changes == {"k": b"v"}
        assert counter.count == 1


async def test_log_is_trimmed() -> None:
    """The change log stays near its bound however many writes are made."""
    async with znode() as (path, client):
        zk = await client()
        backend = ZookeeperBackend(path, zk)
        await backend.start()
        for i in range(zookeeper._LOG_KEEP + 2 * zookeeper._TRIM_EVERY):
            await backend.set("k", str(i).encode())
        # The trim runs beside the writes: wait for the last one to finish.
        assert backend._trimming is not None
        await backend._trimming
        entries = await zk.get_children(f"{path}/.log")
        assert len(entries) <= zookeeper._LOG_KEEP + zookeeper._TRIM_EVERY
        await backend.aclose()


async def test_owned_client_is_closed_without_tasks_left() -> None:
    """With owns_client the dict starts the client and aclose() leaves none of aiozk's tasks."""
    async with znode() as (path, _client):
        import aiozk

        before = asyncio.all_tasks()
        zk = aiozk.ZKClient(ZOOKEEPER)
        async with ZookeeperDict[Any](path, zk, owns_client=True) as d:
            await d.set("k", 1)
        await asyncio.sleep(0)
        assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()


async def test_closing_a_client_whose_server_is_gone_leaves_no_task() -> None:
    """close_client() ends aiozk's reader, heartbeat and repair loop even with no server to answer."""
    import aiozk

    before = asyncio.all_tasks()
    zk = aiozk.ZKClient("127.0.0.1:12199", session_timeout=2)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await zk.start()
    await close_client(zk, 0.5)
    await asyncio.sleep(0)
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()


async def test_servers_before_3_6_are_read_without_multiread() -> None:
    """Against a server too old for multiRead, reads fall back to pipelined gets with the same answers."""
    async with znode() as (path, client):
        zk = await client()
        backend = ZookeeperBackend(path, zk)
        await backend.start()
        await backend.update({"a": b"1", "b": b"2"})
        zk.session.conn.version_info = (3, 5, 9)
        counter = Counter(zk)
        delta = await backend.load()
        assert delta.changes == {"a": b"1", "b": b"2"}
        assert counter.count == 3
        popped = await backend.pop("a")
        assert popped is not None
        assert popped[1] == b"1"
        assert await backend.pop("missing") is None


async def test_clear_beyond_one_request_goes_in_guarded_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the deletes do not fit one request, clear() still removes every key and reports them all."""
    async with znode() as (path, client):
        zk = await client()
        backend = ZookeeperBackend(path, zk)
        await backend.start()
        await backend.update({f"key-{i}": b"1" for i in range(120)})
        _, before = await zk.get(path)
        monkeypatch.setattr(zookeeper, "MAX_REQUEST_BYTES", 8000)
        delta = await backend.clear()
        _, after = await zk.get(path)
        assert after.version - before.version > 1  # several transactions
        assert delta.changes == {f"key-{i}": None for i in range(120)}
        assert await zk.get_children(path) == [".log"]
