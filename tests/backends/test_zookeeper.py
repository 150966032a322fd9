"""What only the ZooKeeper store has: key escaping, the stamp and change log, request counts, limits."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aiodurabledict import Delta, ValueTooLargeError
from aiodurabledict.backends.zookeeper import (
    MAX_REQUEST_BYTES,
    MAX_VALUE_BYTES,
    ZookeeperBackend,
    ZookeeperDict,
    close_client,
    escape_key,
    reads,
    unescape_key,
    writes,
)
from aiodurabledict.backends.zookeeper.layout import INLINE_LIMIT, parse_entry, parse_stamp
from tests.servers import require_zookeeper_ensemble
from tests.stores.zookeeper import (
    ZOOKEEPER,
    Requests,
    delete_tree,
    start_client,
    zookeeper_znode,
)

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


async def started(path: str, client: Any, **options: Any) -> ZookeeperBackend:
    backend = ZookeeperBackend(path, client, **options)
    await backend.start()
    return backend


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
    import aiozk

    client = aiozk.ZKClient(ZOOKEEPER)
    for bad in ("settings", "/", "", "/zookeeper/x", "/a/../b", "/a/./b"):
        with pytest.raises(ValueError, match="keyspace"):
            ZookeeperBackend(bad, client)


def test_repr_names_the_servers_and_the_node_and_masks_the_password() -> None:
    """The backend's repr names the store kind, the servers and the node, never the password."""
    import aiozk

    client = aiozk.ZKClient("127.0.0.1:2181,127.0.0.1:2182")
    backend = ZookeeperBackend("/app/settings", client, credentials=("alice", "s3cret"))
    assert (
        repr(backend)
        == "ZookeeperBackend('zookeeper://alice:***@127.0.0.1:2181,127.0.0.1:2182/app/settings')"
    )
    assert "s3cret" not in repr(ZookeeperDict("/app/settings", client, credentials=("alice", "s3cret")))


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
        backend = await started(path, zk)
        half = b"x" * (MAX_REQUEST_BYTES // 2 + 1024)
        with pytest.raises(ValueTooLargeError):
            await backend.update({"a": half, "b": half})
        assert sorted(await zk.get_children(path)) == [".log"]


async def test_open_pipelines_the_reads() -> None:
    """Loading N keys takes one listing plus one multiRead per 200 keys, whatever N."""
    async with znode() as (path, client):
        zk = await client()
        backend = await started(path, zk)
        n = 1000
        for start in range(0, n, 250):
            await backend.update({f"k{i}": b"1" for i in range(start, start + 250)})
        requests = Requests(zk)
        delta = await backend.load()
        assert len(delta.changes) == n
        assert delta.full
        assert requests.count == 1 + math.ceil(n / reads.READ_CHUNK)


@pytest.mark.parametrize("n", [10, 600])
async def test_changes_since_is_flat_in_n(n: int) -> None:
    """Unchanged or one small write since: one request; one large write: two; several writes: four.
    Each check's first read follows a sync, pipelined with it (no round trip of its own)."""
    async with znode() as (path, client):
        mine, theirs = await started(path, await client()), await started(path, await client())
        await theirs.update({f"k{i}": b"1" for i in range(n)})
        version = (await mine.load()).version
        requests = Requests(mine.client)

        assert (await mine.changes_since(version)).changes == {}
        assert requests.count == 1

        requests.reset()
        await theirs.set("k1", b"2")
        delta = await mine.changes_since(version)
        assert delta.changes == {"k1": b"2"}
        assert delta.prev == version
        assert requests.count == 1
        version = delta.version

        requests.reset()
        large = b"x" * (INLINE_LIMIT + 1)
        await theirs.set("k1", large)
        delta = await mine.changes_since(version)
        assert delta.changes == {"k1": large}
        assert requests.count == 2
        version = delta.version

        requests.reset()
        await theirs.set("k2", b"3")
        await theirs.pop("k3")
        delta = await mine.changes_since(version)
        assert delta.changes == {"k2": b"3", "k3": None}
        assert requests.count == 4


@pytest.mark.parametrize("started", [False, True], ids=["owned-client", "started-client"])
@pytest.mark.parametrize("where", ["standalone", "ensemble"])
async def test_a_check_reads_after_a_sync_unless_the_server_is_standalone(where: str, started: bool) -> None:
    """On an ensemble a check's read follows a sync in the same round trip (the follower catches up
    with its leader first); a standalone server holds every commit, so no sync is sent, whether the
    dict started the client or was handed one already connected."""
    import aiozk

    servers = ZOOKEEPER if where == "standalone" else require_zookeeper_ensemble()
    async with zookeeper_znode(servers) as (path, clients):
        client = await start_client(servers) if started else aiozk.ZKClient(servers, session_timeout=10)
        clients.append(client)
        async with ZookeeperDict[Any](path, client, owns_client=not started, watch=False) as d:
            requests = Requests(client)
            await d.sync()
            assert requests.sent == (["MultiRead"] if where == "standalone" else ["SyncRequest", "MultiRead"])


async def test_changes_since_reloads_when_the_log_is_trimmed() -> None:
    """When the log no longer reaches back to the version, the answer is a full reload."""
    async with znode() as (path, client):
        mine = await started(path, await client())
        theirs = await started(path, await client(), log_keep=2)
        await theirs.update({"a": b"1", "b": b"1"})
        version = (await mine.load()).version
        for i in range(6):
            await theirs.set("a", str(i).encode())
            await asyncio.sleep(0.05)  # let each trim run
        await theirs.pop("b")
        delta = await mine.changes_since(version)
        assert delta.full
        assert delta.changes == {"a": b"5"}


async def test_every_write_is_one_transaction_with_stamp_and_log() -> None:
    """update of many keys raises the stamp's write count by one and logs one entry naming them all;
    stamp and entry carry the commit's token, and the stamp names the commit before it."""
    async with znode() as (path, client):
        zk = await client()
        backend = await started(path, zk)
        first = await backend.set("before", b"1")
        _, before = await zk.get(path)
        requests = Requests(zk)
        delta = await backend.update({f"k/{i}": b"v" for i in range(50)})
        assert requests.count == 1
        data, after = await zk.get(path)
        assert after.version == before.version + 1
        assert delta.version == after.last_modified_zxid
        stamp = parse_stamp(data)
        assert stamp.token == delta.token
        assert stamp.names == frozenset(escape_key(f"k/{i}") for i in range(50))
        assert stamp.before is not None
        assert (stamp.before.count, stamp.before.zxid, stamp.before.token) == (1, first.version, first.token)
        assert (delta.prev, delta.prev_token) == (first.version, first.token)
        entries = sorted(await zk.get_children(f"{path}/.log"))
        assert len(entries) == 2
        entry = parse_entry(await zk.get_data(f"{path}/.log/{entries[-1]}"))
        assert entry.token == delta.token
        assert entry.names == stamp.names


async def test_update_retries_with_create_or_set_as_each_node_needs() -> None:
    """update over keys another client created or deleted behind our back still lands whole."""
    async with znode() as (path, client):
        mine, theirs = await started(path, await client()), await started(path, await client())
        await mine.update({"a": b"1", "b": b"1"})
        await theirs.pop("a")
        await theirs.set("c", b"1")
        await mine.update({"a": b"2", "b": b"2", "c": b"2"})
        assert (await theirs.load()).changes == {"a": b"2", "b": b"2", "c": b"2"}


async def test_setdefault_creates_once_across_clients() -> None:
    """Of many clients racing setdefault, one creates the node and all return its value."""
    async with znode() as (path, client):
        backends = [ZookeeperBackend(path, await client()) for _ in range(6)]
        for backend in backends:
            await backend.start()
        results = await asyncio.gather(*(b.setdefault("k", str(i).encode()) for i, b in enumerate(backends)))
        assert len({raw for _, raw in results}) == 1
        assert len({delta.version for delta, _ in results}) == 1
        assert len({delta.token for delta, _ in results}) == 1
        _, stat = await backends[0].client.get(path)
        assert stat.version == 1


async def test_pop_deletes_only_the_version_it_read() -> None:
    """pop returns what it deleted; a missing key writes nothing; racing pops return it once."""
    async with znode() as (path, client):
        backends = [ZookeeperBackend(path, await client()) for _ in range(5)]
        for backend in backends:
            await backend.start()
        await backends[0].set("k", b"v")
        results = await asyncio.gather(*(b.pop("k") for b in backends))
        assert [raw for _, raw in results if raw is not None] == [b"v"]
        zk = backends[0].client
        data, before = await zk.get(path)
        delta, raw = await backends[0].pop("k")
        assert raw is None
        _, after = await zk.get(path)
        assert after.version == before.version
        # A reading: the key absent at the store's version, with that version's token.
        assert delta.prev is None
        assert delta.changes == {"k": None}
        assert (delta.version, delta.token) == (before.last_modified_zxid, parse_stamp(data).token)


async def test_clear_removes_exactly_the_keys_present() -> None:
    """clear deletes every key node in one guarded transaction; the log and stamp stay."""
    async with znode() as (path, client):
        zk = await client()
        backend = await started(path, zk)
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
    """Each notice's prev (and prev_token) is the previous notice's version (and token); together
    they carry every write."""
    async with znode() as (path, client):
        mine, theirs = await started(path, await client()), await started(path, await client())
        baseline = await mine.load()
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
        assert (seen[0].prev, seen[0].prev_token) == (baseline.version, baseline.token)
        for before, after in itertools.pairwise(seen):
            assert (after.prev, after.prev_token) == (before.version, before.token)
        final: dict[str, bytes | None] = {}
        for n in seen:
            final.update(n.changes)
        assert final == {"k0": None, "k1": b"19", "k2": b"17"}


async def test_own_writes_need_no_fetch_to_be_noticed() -> None:
    """The subscription answers a write this backend made from what it wrote: one stamp read."""
    async with znode() as (path, client):
        zk = await client()
        backend = await started(path, zk)
        await backend.load()
        async with backend.subscribe() as notices:
            written = await backend.update({"k": b"v" * (INLINE_LIMIT + 1), "j": b"w"})
            requests = Requests(zk)
            notice = await asyncio.wait_for(anext(notices), 5)
        assert notice.version == written.version
        assert notice.changes == {"k": b"v" * (INLINE_LIMIT + 1), "j": b"w"}
        assert requests.count == 1


async def test_log_is_trimmed() -> None:
    """The change log stays near its bound however many writes are made."""
    async with znode() as (path, client):
        zk = await client()
        backend = await started(path, zk, log_keep=16)
        for i in range(100):
            await backend.set("k", str(i).encode())
        for _ in range(100):  # the trim runs beside the writes
            if len(await zk.get_children(f"{path}/.log")) <= 16 + 4:
                break
            await asyncio.sleep(0.05)
        assert len(await zk.get_children(f"{path}/.log")) <= 16 + 4
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
        backend = await started(path, zk)
        await backend.update({"a": b"1", "b": b"2"})
        zk.session.conn.version_info = (3, 5, 9)
        requests = Requests(zk)
        delta = await backend.load()
        assert delta.changes == {"a": b"1", "b": b"2"}
        assert "MultiRead" not in requests.sent
        _, popped = await backend.pop("a")
        assert popped == b"1"
        assert (await backend.pop("missing"))[1] is None


async def test_clear_beyond_one_request_goes_in_guarded_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the deletes do not fit one request, clear() still removes every key and reports them all."""
    async with znode() as (path, client):
        zk = await client()
        backend = await started(path, zk)
        await backend.update({f"key-{i}": b"1" for i in range(120)})
        _, before = await zk.get(path)
        monkeypatch.setattr(writes, "MAX_REQUEST_BYTES", 8000)
        delta = await backend.clear()
        _, after = await zk.get(path)
        assert after.version - before.version > 1  # several transactions
        assert delta.changes == {f"key-{i}": None for i in range(120)}
        assert await zk.get_children(path) == [".log"]
