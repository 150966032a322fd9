"""What only the Redis store has: one script per commit, the change log and its horizon, notices,
the hash-tag layout, clients that decode responses, and keys Redis must carry byte for byte."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest

pytest.importorskip("redis")

from redis.asyncio import Connection, Redis
from redis.crc import key_slot

from aiodurabledict import AsyncDurableDict, DecodeError, Delta, PushBackend
from aiodurabledict.backends.redis import RedisBackend, RedisDict, parse_notice
from aiodurabledict.testing.conformance import eventually
from tests.stores.redis import REDIS_URL, redis_keyspace

pytestmark = pytest.mark.redis

B = 100  # the version the test backends continue from


class CountingConnection(Connection):
    """Counts what is sent: one packed send is one round trip (a pipeline is sent at once)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


@pytest.fixture
def counted() -> type[CountingConnection]:
    CountingConnection.sent = 0
    return CountingConnection


@asynccontextmanager
async def backend(**opts: Any) -> AsyncIterator[tuple[RedisBackend, Redis]]:
    """A started backend on a fresh keyspace; its client counts round trips."""
    client_opts = {k: opts.pop(k) for k in ("decode_responses", "protocol") if k in opts}
    async with redis_keyspace() as (keyspace, clients):
        client = Redis.from_url(REDIS_URL, connection_class=CountingConnection, **client_opts)
        clients.append(client)
        b = RedisBackend(keyspace, client, **opts)
        await b.start()
        # Versions continue from B, so that tests can name them (a new store starts from the clock).
        await clients[0].set(b.version_key, B)
        yield b, clients[0]


async def round_trips(call: Any) -> tuple[Any, int]:
    before = CountingConnection.sent
    result = await call
    return result, CountingConnection.sent - before


async def test_backend_follows_the_push_protocol() -> None:
    """RedisBackend is a PushBackend with dense versions and the documented limits."""
    async with backend() as (b, _):
        assert isinstance(b, PushBackend)
        assert b.dense_versions is True
        assert b.max_key_bytes == 64 * 1024
        assert b.max_value_bytes == 512 * 1024 * 1024


async def test_every_write_and_read_is_one_round_trip(counted: type[CountingConnection]) -> None:
    """Each write, load and changes_since is a single round trip (the scripts are loaded by start())."""
    async with backend() as (b, _):
        calls = {
            "set": b.set("a", b"1"),
            "setdefault new": b.setdefault("b", b"2"),
            "setdefault existing": b.setdefault("b", b"3"),
            "update": b.update({"c": b"3", "d": b"4"}),
            "pop": b.pop("c"),
            "pop missing": b.pop("zz"),
            "load": b.load(),
            "changes_since changed": b.changes_since(B + 1),
            "changes_since unchanged": b.changes_since(B + 4),
            "clear": b.clear(),
            "clear empty": b.clear(),
        }
        for name, call in calls.items():
            _, trips = await round_trips(call)
            assert trips == 1, name


async def test_writes_return_exactly_what_they_wrote() -> None:
    """Every commit raises the version by one; no-op writes commit nothing and keep the version."""
    async with backend() as (b, _):
        assert await b.set("a", b"1") == Delta(B + 1, {"a": b"1"}, prev=B)
        assert await b.setdefault("a", b"x") == (Delta(B + 1, {"a": b"1"}, prev=None), b"1")
        assert await b.setdefault("b", b"2") == (Delta(B + 2, {"b": b"2"}, prev=B + 1), b"2")
        assert await b.update({"c": b"3", "d": b"4"}) == Delta(B + 3, {"c": b"3", "d": b"4"}, prev=B + 2)
        assert await b.pop("c") == (Delta(B + 4, {"c": None}, prev=B + 3), b"3")
        assert await b.pop("c") is None
        assert await b.update({}) == Delta(B + 4)
        cleared = await b.clear()
        assert cleared.version == B + 5
        assert cleared.prev == B + 4
        assert cleared.changes == {"a": None, "b": None, "d": None}
        assert await b.clear() == Delta(B + 5)
        assert (await b.load()).version == B + 5


async def test_changes_since_returns_only_the_changes() -> None:
    """changes_since(v) holds every key changed after v, deletions as None; unchanged is empty."""
    async with backend() as (b, _):
        await b.update({f"k{i}": b"v" for i in range(100)})
        await b.set("k1", b"new")
        await b.pop("k2")
        assert await b.changes_since(B + 1) == Delta(B + 3, {"k1": b"new", "k2": None}, prev=B + 1)
        assert await b.changes_since(B + 3) == Delta(B + 3, {}, prev=B + 3)


async def test_changes_since_costs_the_changes_not_the_size(counted: type[CountingConnection]) -> None:
    """After one change in 20,000 keys, changes_since sends back one key (no full reload)."""
    async with backend() as (b, _):
        await b.update({f"k{i}": b"v" * 10 for i in range(20_000)})
        await b.set("k7", b"changed")
        delta, trips = await round_trips(b.changes_since(B + 1))
        assert trips == 1
        assert delta == Delta(B + 2, {"k7": b"changed"}, prev=B + 1)
        assert not delta.full


async def test_trimmed_log_falls_back_to_a_full_load() -> None:
    """Once deleted keys exceed tombstone_limit the oldest log entries go; older caches reload fully."""
    async with backend(tombstone_limit=4) as (b, admin):
        await b.update({"keep": b"1"})
        for i in range(10):
            await b.set(f"t{i}", b"x")
            await b.pop(f"t{i}")
        horizon = int(await admin.get(b.horizon_key) or 0)
        assert horizon > B + 1
        assert await admin.zcard(b.log_key) <= 1 + 4
        old = await b.changes_since(B + 1)
        assert old.full
        assert old.changes == {"keep": b"1"}
        recent = await b.changes_since(horizon)
        assert not recent.full


async def test_clear_makes_older_caches_reload() -> None:
    """clear() wipes the log and raises the horizon: a cache from before it gets a full (empty) load."""
    async with backend() as (b, admin):
        await b.update({"a": b"1", "b": b"2"})
        cleared = await b.clear()
        assert await admin.exists(b.log_key, b.data_key) == 0
        assert (await b.changes_since(B + 1)) == Delta(cleared.version, {}, full=True)
        assert (await b.changes_since(cleared.version)) == Delta(cleared.version, {}, prev=cleared.version)


async def test_store_behind_the_cache_gives_a_full_load() -> None:
    """A cache version ahead of the store (data lost and restarted) gets a full load, not a delta."""
    async with backend() as (b, _):
        await b.set("a", b"1")
        delta = await b.changes_since(B + 50)
        assert delta.full
        assert delta.version == B + 1


async def test_new_store_starts_from_the_clock() -> None:
    """A store's first commit takes a clock-based version with the horizon just below it."""
    async with redis_keyspace() as (keyspace, clients):
        b = RedisBackend(keyspace, clients[0])
        assert await b.load() == Delta(0, {}, full=True)
        seconds, micros = await clients[0].time()
        first = await b.set("a", b"1")
        assert first.version >= seconds * 1_000_000 + micros
        assert first.prev == first.version - 1
        assert int(await clients[0].get(b.horizon_key) or 0) == first.version - 1
        assert (await b.changes_since(0)).full
        assert (await b.set("a", b"2")).version == first.version + 1


async def test_cache_reloads_after_the_store_lost_its_keys() -> None:
    """Keys lost (a restart without persistence, a FLUSHDB) then new writes: caches from before the
    loss drop what was lost and take what was written since, not trusting their old version."""
    async with redis_keyspace() as (keyspace, clients):
        reader_client, writer_client = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
        clients += [reader_client, writer_client]
        async with (
            RedisDict[Any](keyspace, reader_client, heartbeat=0.2) as d,
            RedisDict[Any](keyspace, writer_client) as writer,
        ):
            await writer.update({"lost": 1, "kept": 1})
            await eventually(lambda: dict(d.view) == {"lost": 1, "kept": 1})
            old_version = d.version
            await clients[0].delete(*(f"{{{keyspace}}}:{p}" for p in ("data", "version", "log", "horizon")))
            await writer.set("kept", 2)
            await writer.set("new", 3)
            await eventually(lambda: dict(d.view) == {"kept": 2, "new": 3})
            assert d.version > old_version


async def test_layout_shares_one_hash_tag() -> None:
    """All keys of a dict share the {keyspace} hash tag (one cluster slot); braces are refused."""
    async with backend() as (b, admin):
        await b.set("a", b"1")
        names = sorted(n for n in await admin.keys(f"{{{b.keyspace}}}:*") if isinstance(n, bytes))
        assert names == [b.data_key, b.log_key, b.version_key]
        assert len({key_slot(name) for name in names}) == 1
        assert b.channel == f"{{{b.keyspace}}}:notices".encode()
    for bad in ("", "a{b", "}x"):
        with pytest.raises(ValueError, match="keyspace"):
            RedisBackend(bad, admin)


async def test_notices_carry_small_changes_and_announce_large_ones() -> None:
    """A notice carries keys and values up to notice_value_limit; a larger commit sends it incomplete."""
    async with backend(notice_value_limit=100) as (b, _), b.subscribe() as subscription:
        notices = aiter(subscription)
        await b.set("small", b"x" * 10)
        assert await anext(notices) == Delta(B + 1, {"small": b"x" * 10}, prev=B)
        await b.set("large", b"x" * 200)
        assert await anext(notices) == Delta(B + 2, {}, prev=B + 1, complete=False)
        await b.pop("small")
        assert await anext(notices) == Delta(B + 3, {"small": None}, prev=B + 2)


async def test_no_op_writes_publish_nothing() -> None:
    """setdefault on an existing key, pop of a missing key and clear of an empty dict publish nothing."""
    async with backend() as (b, _):
        await b.set("a", b"1")
        async with b.subscribe() as subscription:
            notices = aiter(subscription)
            await b.setdefault("a", b"2")
            await b.pop("missing")
            await b.update({})
            await b.set("b", b"2")  # the next notice is this one: nothing came before it
            assert await anext(notices) == Delta(B + 2, {"b": b"2"}, prev=B + 1)
            await b.clear()
            assert (await anext(notices)).changes == {"a": None, "b": None}
            await b.clear()
            await b.set("c", b"3")
            assert await anext(notices) == Delta(B + 4, {"c": b"3"}, prev=B + 3)


ALPHABET = ["a", "/", ":", "=", "-", "\n", " ", "0", "9", "é", "日", "🙂", "{", "}", "\\", "\x00"]


def _random_key(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))


async def test_notices_round_trip_arbitrary_keys_and_values() -> None:
    """Fuzz: notices built by the Lua scripts parse back to exactly the keys and bytes written."""
    rng = random.Random(20240601)
    async with backend(notice_value_limit=1 << 20) as (b, _), b.subscribe() as subscription:
        notices = aiter(subscription)
        for _ in range(200):
            items = {_random_key(rng): rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 5))}
            if rng.random() < 0.3:
                key = rng.choice(list(items))
                written = await b.pop(key)
                expected = None if written is None else written[0]
            else:
                expected = await b.update(items)
            if expected is not None:
                assert await anext(notices) == expected


def _encode(version: int, changes: dict[str, bytes | None]) -> bytes:
    """The notice format as the scripts write it (a test oracle)."""
    out = [f"1 {version} {version - 1} c\n".encode()]
    for key, value in changes.items():
        raw = key.encode("utf-8", "surrogateescape")
        out.append(b"%d:%s" % (len(raw), raw))
        out.append(b"-" if value is None else b"=%d:%s" % (len(value), value))
    return b"".join(out)


def test_notice_parser_round_trips_and_rejects_garbage() -> None:
    """parse_notice inverts the format; any other bytes raise ValueError, never anything else."""
    rng = random.Random(7)
    for _ in range(2000):
        changes = {
            _random_key(rng): None if rng.random() < 0.2 else rng.randbytes(rng.randint(0, 30))
            for _ in range(rng.randint(0, 6))
        }
        version = rng.randint(1, 2**53)
        data = _encode(version, changes)
        assert parse_notice(data) == Delta(version, changes, prev=version - 1)
        # Every truncation and every single-byte corruption either parses or raises ValueError.
        cut = data[: rng.randint(0, len(data))]
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        for garbage in (cut, bytes(flipped), rng.randbytes(rng.randint(0, 40))):
            with suppress(ValueError):
                parse_notice(garbage)
    assert parse_notice(b"1 5 4 i\n") == Delta(5, {}, prev=4, complete=False)


@pytest.mark.parametrize(
    ("decode_responses", "protocol"), [(False, 2), (True, 2), (False, 3), (True, 3)], ids=str
)
async def test_any_client_decoding_and_protocol_reads_bytes(decode_responses: bool, protocol: int) -> None:
    """Clients with decode_responses=True or RESP3 work untouched: values stay bytes, even non-UTF-8."""
    async with backend(decode_responses=decode_responses, protocol=protocol) as (b, _):
        await b.set("bin", b"\xff\xfe\x00")
        async with b.subscribe() as subscription:
            await b.set("k/é", b"\x80")
            assert await anext(aiter(subscription)) == Delta(B + 2, {"k/é": b"\x80"}, prev=B + 1)
        assert (await b.load()).changes == {"bin": b"\xff\xfe\x00", "k/é": b"\x80"}
        assert (await b.changes_since(0)).changes == {"bin": b"\xff\xfe\x00", "k/é": b"\x80"}
        assert b.client.get_encoder().decode_responses is decode_responses


async def test_corrupted_value_fails_only_its_key() -> None:
    """A value written raw (not JSON) raises DecodeError for that key; every other key loads."""
    async with redis_keyspace() as (keyspace, clients):
        admin = clients[0]
        async with RedisDict[Any](keyspace, admin) as writer:
            await writer.update({"good": 1, "also": [2]})
        await admin.hset(f"{{{keyspace}}}:data", "bad", b"\xff not json")
        async with RedisDict[Any](keyspace, admin) as d:
            assert d["good"] == 1
            assert d["also"] == [2]
            with pytest.raises(DecodeError) as info:
                d["bad"]
            assert info.value.key == "bad"
            with pytest.raises(DecodeError):
                await d.get("bad")
            await d.set("bad", "fixed")
            assert d["bad"] == "fixed"


async def test_awkward_keys_survive_byte_for_byte() -> None:
    """Keys with '/', unicode, separators of the notice format, and 10,000 characters round-trip."""
    keys = ["a/b/c", "日本語", "🙂", "1:x=2-", "line\nbreak", "k" * 10_000, "é" * 10_000]
    async with redis_keyspace() as (keyspace, clients):
        reader_client = Redis.from_url(REDIS_URL)
        clients.append(reader_client)
        async with (
            RedisDict[Any](keyspace, clients[0]) as d,
            RedisDict[Any](keyspace, reader_client) as other,
        ):
            for i, key in enumerate(keys):
                await d.set(key, i)
            await eventually(lambda: all(other.view.get(k) == i for i, k in enumerate(keys)))
        async with RedisDict[Any](keyspace, clients[0]) as fresh:
            assert dict(fresh.view) == {k: i for i, k in enumerate(keys)}


async def test_redis_dict_leaves_the_client_open_unless_it_owns_it() -> None:
    """aclose() keeps the user's client usable; owns_client=True closes it."""
    async with redis_keyspace() as (keyspace, clients):
        client = Redis.from_url(REDIS_URL)
        clients.append(client)
        async with RedisDict[Any](keyspace, client) as d:
            await d.set("a", 1)
        assert await client.ping()
        owned = Redis.from_url(REDIS_URL)
        async with RedisDict[Any](keyspace, owned, owns_client=True) as d:
            assert d["a"] == 1
        pool = owned.connection_pool
        assert not any(c.is_connected for c in (*pool._available_connections, *pool._in_use_connections))


async def test_subscription_leaves_nothing_behind() -> None:
    """Leaving the subscription closes its connection: the server lists no subscriber afterwards."""
    async with backend() as (b, admin):
        channel = b.channel
        async with b.subscribe():
            assert (await admin.pubsub_numsub(channel))[0][1] == 1
        for _ in range(100):
            if (await admin.pubsub_numsub(channel))[0][1] == 0:
                break
            await asyncio.sleep(0.01)
        assert (await admin.pubsub_numsub(channel))[0][1] == 0


async def test_watcher_keeps_sync_free(counted: type[CountingConnection]) -> None:
    """With a live watcher, sync() and an autosync get() send nothing to Redis."""
    async with redis_keyspace() as (keyspace, clients):
        client = Redis.from_url(REDIS_URL, connection_class=CountingConnection)
        writer_client = Redis.from_url(REDIS_URL)
        clients += [client, writer_client]
        async with (
            RedisDict[Any](keyspace, client, heartbeat=60) as d,
            RedisDict[Any](keyspace, writer_client) as writer,
        ):
            await writer.set("a", 1)
            await eventually(lambda: d.view.get("a") == 1 and d.status.connected)
            _, trips = await round_trips(d.sync())
            assert trips == 0
            value, trips = await round_trips(d.get("a"))
            assert (value, trips) == (1, 0)


async def test_cancelled_calls_leave_the_client_usable() -> None:
    """Cancelling writes at any point never leaves a stray reply for the next command on the client."""
    async with backend() as (b, admin):
        rng = random.Random(3)
        for i in range(60):
            task = asyncio.create_task(b.set(f"k{i}", b"%d" % i))
            await asyncio.sleep(rng.random() * 0.002)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # Each reply must belong to its own command.
            probe = f"{{{b.keyspace}}}:probe{i}"
            assert await b.client.set(probe, i) is True
            assert await b.client.get(probe) == b"%d" % i
        await admin.delete(*(f"{{{b.keyspace}}}:probe{i}" for i in range(60)))
        content = (await b.load()).changes
        assert all(content[k] == k[1:].encode() for k in content)


async def test_options_are_validated() -> None:
    """Negative limits are refused at construction, before any I/O."""
    client = Redis.from_url(REDIS_URL)
    try:
        with pytest.raises(ValueError, match="limit"):
            RedisBackend("x", client, tombstone_limit=-1)
        with pytest.raises(ValueError, match="limit"):
            RedisDict[Any]("x", client, notice_value_limit=-1)
        assert isinstance(RedisDict[Any]("x", client), AsyncDurableDict)
    finally:
        await client.aclose()


async def test_caches_follow_a_store_restored_from_an_older_backup() -> None:
    """A store put back to an older state (DUMP/RESTORE of its keys): caches reload it, new writes show."""
    parts = ("data", "version", "log", "horizon")
    async with redis_keyspace() as (keyspace, clients):
        admin = clients[0]
        names = [f"{{{keyspace}}}:{p}" for p in parts]
        reader_client, writer_client = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
        clients += [reader_client, writer_client]
        async with (
            RedisDict[Any](keyspace, reader_client, heartbeat=0.2) as reader,
            RedisDict[Any](keyspace, writer_client, watch=False) as writer,
        ):
            await writer.update(a=1, b=1)
            backup = {name: await admin.dump(name) for name in names}
            for i in range(5):
                await writer.set("b", i + 2)
            await writer.set("lost", True)
            # A store's first commit starts from the clock: one sync puts the writer on that timeline.
            await writer.sync()
            await eventually(lambda: reader == {"a": 1, "b": 6, "lost": True})
            for name, blob in backup.items():
                if blob is None:
                    await admin.delete(name)
                else:
                    await admin.restore(name, 0, blob, replace=True)
            await writer.set("after", 1)
            assert writer == {"a": 1, "b": 1, "after": 1}
            await eventually(lambda: reader == {"a": 1, "b": 1, "after": 1}, within=10)
            assert reader.version == writer.version == int(await admin.get(names[1]))
