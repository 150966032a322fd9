"""What only the Redis store has: one script per commit, commit tokens and their history, the change
log and its horizon, readings, compare-and-set, the hash-tag layout, clients that decode responses,
stores written before tokens existed, and hash fields that are not text."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

pytest.importorskip("redis")

from redis.asyncio import Connection, Redis
from redis.crc import key_slot

from aiodurabledict import AsyncDurableDict, DecodeError, Delta, PushBackend
from aiodurabledict.backends.redis import RedisBackend, RedisDict
from aiodurabledict.testing.conformance import eventually
from tests.stores.redis import REDIS_URL, drop_keyspace, redis_keyspace

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
async def backend(**opts: Any) -> AsyncIterator[tuple[RedisBackend, Any]]:
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


def bare(delta: Delta) -> Delta:
    """``delta`` without its tokens (they are random), for comparisons."""
    return dataclasses.replace(delta, token=None, prev_token=None)


async def test_backend_follows_the_push_protocol() -> None:
    """RedisBackend is a PushBackend with the documented limits and no polling suggestion."""
    async with backend() as (b, _):
        assert isinstance(b, PushBackend)
        assert b.poll_interval is None
        assert b.max_key_bytes == 64 * 1024
        assert b.max_value_bytes == 512 * 1024 * 1024
        assert "Redis" in repr(b)
        assert b.keyspace in repr(b)


async def test_every_write_and_read_is_one_round_trip(counted: type[CountingConnection]) -> None:
    """Each write, load and unchanged changes_since is a single round trip (the scripts are loaded by
    start()); a changed changes_since is one more (the check, then the range)."""
    async with backend() as (b, _):
        calls = {
            "set": b.set("a", b"1"),
            "setdefault new": b.setdefault("b", b"2"),
            "setdefault existing": b.setdefault("b", b"3"),
            "update": b.update({"c": b"3", "d": b"4"}),
            "pop": b.pop("c"),
            "pop missing": b.pop("zz"),
            "compare_and_set": b.compare_and_set("a", b"1", b"2"),
            "compare_and_set failed": b.compare_and_set("a", b"1", b"3"),
            "load": b.load(),
            "changes_since unchanged": b.changes_since(B + 5),
            "clear": b.clear(),
            "clear empty": b.clear(),
        }
        for name, call in calls.items():
            _, trips = await round_trips(call)
            assert trips == 1, name
        written = await b.set("z", b"1")
        _, trips = await round_trips(b.changes_since(written.version - 1))
        assert trips == 2


async def test_commits_chain_their_tokens() -> None:
    """Every commit raises the version by one and names the token of the version before it."""
    async with backend() as (b, admin):
        first = await b.set("a", b"1")
        second = await b.update({"b": b"2", "c": b"3"})
        third = await b.pop("b")
        assert bare(first) == Delta(B + 1, {"a": b"1"}, prev=B)
        assert first.prev_token is None  # the store had no token before its first tokened commit
        assert bare(second) == Delta(B + 2, {"b": b"2", "c": b"3"}, prev=B + 1)
        assert second.prev_token == first.token
        assert third == (
            Delta(B + 3, {"b": None}, prev=B + 2, token=third[0].token, prev_token=second.token),
            b"2",
        )
        tokens = {first.token, second.token, third[0].token}
        assert None not in tokens
        assert len(tokens) == 3
        assert (await admin.get(b.token_key)).decode() == third[0].token
        history = await admin.zrange(b.tokens_key, 0, -1, withscores=True)
        assert [(t.decode(), int(v)) for t, v in history] == [
            (first.token, B + 1),
            (second.token, B + 2),
            (third[0].token, B + 3),
        ]


async def test_readings_carry_the_version_and_token_read() -> None:
    """pop of an absent key, setdefault of a present one, a failed compare_and_set and writes of
    nothing are readings (prev None) at the store's version and token: nothing is written."""
    async with backend() as (b, _):
        commit = await b.set("a", b"1")
        v, t = commit.version, commit.token
        assert await b.pop("zz") == (Delta(v, {"zz": None}, token=t), None)
        assert await b.setdefault("a", b"x") == (Delta(v, {"a": b"1"}, token=t), b"1")
        assert await b.compare_and_set("a", b"9", b"2") == (Delta(v, {"a": b"1"}, token=t), False)
        assert await b.compare_and_set("n", b"9", None) == (Delta(v, {"n": None}, token=t), False)
        assert await b.compare_and_set("n", None, None) == (Delta(v, {"n": None}, token=t), True)
        assert await b.update({}) == Delta(v, token=t)
        await b.clear()
        cleared = (await b.load()).token
        assert await b.clear() == Delta(B + 2, token=cleared)


async def test_compare_and_set_swaps_and_removes() -> None:
    """compare_and_set writes over the expected bytes (None: absent), removes with new=None."""
    async with backend() as (b, _):
        created, ok = await b.compare_and_set("k", None, b"1")
        assert ok
        assert bare(created) == Delta(B + 1, {"k": b"1"}, prev=B)
        swapped, ok = await b.compare_and_set("k", b"1", b"2")
        assert ok
        assert bare(swapped) == Delta(B + 2, {"k": b"2"}, prev=B + 1)
        assert swapped.prev_token == created.token
        removed, ok = await b.compare_and_set("k", b"2", None)
        assert ok
        assert bare(removed) == Delta(B + 3, {"k": None}, prev=B + 2)
        assert (await b.load()).changes == {}


async def test_changes_since_names_the_token_it_started_from() -> None:
    """changes_since(v) holds every key changed after v with the store's token at v; unchanged, it
    is the small reply (version and token only)."""
    async with backend() as (b, _):
        base = await b.update({f"k{i}": b"v" for i in range(100)})
        await b.set("k1", b"new")
        last, _ = await b.pop("k2")
        delta = await b.changes_since(B + 1)
        assert bare(delta) == Delta(B + 3, {"k1": b"new", "k2": None}, prev=B + 1)
        assert (delta.prev_token, delta.token) == (base.token, last.token)
        assert await b.changes_since(B + 3) == Delta(
            B + 3, prev=B + 3, token=last.token, prev_token=last.token
        )


async def test_changes_since_costs_the_changes_not_the_size(counted: type[CountingConnection]) -> None:
    """After one change in 20,000 keys, changes_since sends back one key (no full reload)."""
    async with backend() as (b, _):
        await b.update({f"k{i}": b"v" * 10 for i in range(20_000)})
        await b.set("k7", b"changed")
        delta, trips = await round_trips(b.changes_since(B + 1))
        assert trips == 2
        assert bare(delta) == Delta(B + 2, {"k7": b"changed"}, prev=B + 1)


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
        assert not (await b.changes_since(horizon)).full


async def test_trimmed_history_raises_the_horizon() -> None:
    """Only history_limit tokens are kept; a cache older than the kept history reloads in full,
    one within it gets its version's token."""
    async with backend(history_limit=3) as (b, admin):
        commits = [await b.set(f"k{i}", b"x") for i in range(6)]
        assert await admin.zcard(b.tokens_key) == 3
        assert int(await admin.get(b.horizon_key)) == B + 4
        assert (await b.changes_since(B + 3)).full
        kept = await b.changes_since(B + 4)
        assert not kept.full
        assert kept.prev_token == commits[3].token


async def test_clear_makes_older_caches_reload() -> None:
    """clear() wipes the log and raises the horizon: a cache from before it gets a full (empty) load."""
    async with backend() as (b, admin):
        await b.update({"a": b"1", "b": b"2"})
        cleared = await b.clear()
        assert bare(cleared) == Delta(B + 2, {"a": None, "b": None}, prev=B + 1)
        assert await admin.exists(b.log_key, b.data_key) == 0
        assert await b.changes_since(B + 1) == Delta(B + 2, {}, full=True, token=cleared.token)
        assert (await b.changes_since(B + 2)).prev == B + 2


async def test_store_behind_the_cache_gives_a_full_load() -> None:
    """A cache version ahead of the store (data lost and restarted) gets a full load, not a range."""
    async with backend() as (b, _):
        await b.set("a", b"1")
        delta = await b.changes_since(B + 50)
        assert delta.full
        assert delta.version == B + 1


async def test_new_store_starts_from_the_clock_after_version_zero() -> None:
    """A store's first commit takes a clock-based version, but names the real previous one (0, no
    token), so that a dict's own first write moves its version (defect 9 of the consistency issue)."""
    async with redis_keyspace() as (keyspace, clients):
        b = RedisBackend(keyspace, clients[0])
        assert await b.load() == Delta(0, {}, full=True)
        seconds, micros = await clients[0].time()
        first = await b.set("a", b"1")
        assert first.version >= seconds * 1_000_000 + micros
        assert (first.prev, first.prev_token) == (0, None)
        assert int(await clients[0].get(b.horizon_key) or 0) == first.version - 1
        assert (await b.changes_since(0)).full
        assert (await b.set("a", b"2")).version == first.version + 1
        async with redis_keyspace() as (fresh, _), RedisDict[Any](fresh, clients[0], watch=False) as d:
            assert d.version == 0
            await d.set("k", 1)
            assert d.version > 0


async def test_store_written_before_tokens_keeps_working() -> None:
    """A store of the previous layout (no token keys): its tokens read as none until the next write,
    and a dict follows it across that write."""
    async with redis_keyspace() as (keyspace, clients):
        admin = clients[0]
        tag = f"{{{keyspace}}}:"
        await admin.hset(tag + "data", mapping={"old": b"1"})
        await admin.set(tag + "version", 41)
        await admin.zadd(tag + "log", {"old": 41})
        b = RedisBackend(keyspace, admin)
        assert await b.load() == Delta(41, {"old": b"1"}, full=True)
        async with RedisDict[Any](keyspace, Redis.from_url(REDIS_URL), owns_client=True, heartbeat=0.2) as d:
            assert d == {"old": 1}
            assert d.version == 41
            first = await b.set("new", b"2")
            assert (first.prev, first.prev_token) == (41, None)
            assert (await b.changes_since(41)).prev_token is None
            await eventually(lambda: d == {"old": 1, "new": 2} and d.version == 42)


async def test_caches_reload_after_the_store_lost_its_keys() -> None:
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
            await drop_keyspace(clients[0], keyspace)
            await writer.set("kept", 2)
            await writer.set("new", 3)
            await eventually(lambda: dict(d.view) == {"kept": 2, "new": 3})
            assert d.version > old_version


async def test_caches_follow_a_store_restored_from_an_older_backup() -> None:
    """A store put back to an older state (DUMP/RESTORE of its keys) moves on past the caches'
    version: every cache reloads (the tokens differ), the writer's own at its next write."""
    async with redis_keyspace() as (keyspace, clients):
        admin = clients[0]
        reader_client, writer_client = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
        clients += [reader_client, writer_client]
        async with (
            RedisDict[Any](keyspace, reader_client, heartbeat=0.2) as reader,
            RedisDict[Any](keyspace, writer_client, watch=False) as writer,
            RedisDict[Any](keyspace, Redis.from_url(REDIS_URL), owns_client=True, watch=False) as other,
        ):
            await writer.update(a=1, b=1)
            names = [n async for n in admin.scan_iter(match=f"{{{keyspace}}}:*")]
            backup = {name: await admin.dump(name) for name in names}
            for i in range(5):
                await writer.set("b", i + 2)
            await writer.set("lost", True)
            await eventually(lambda: reader == {"a": 1, "b": 6, "lost": True})
            lost_at = reader.version
            await drop_keyspace(admin, keyspace)
            for name, blob in backup.items():
                await admin.restore(name, 0, blob, replace=True)
            await other.sync()
            for i in range(8):  # past the caches' version, with other commits
                await other.set(f"new{i}", i)
            assert other.version > lost_at
            expected = {"a": 1, "b": 1, **{f"new{i}": i for i in range(8)}}
            await eventually(lambda: reader == expected, within=10)
            await writer.set("after", 1)
            assert writer == {**expected, "after": 1}


async def test_layout_shares_one_hash_tag() -> None:
    """All keys of a dict share the {keyspace} hash tag (one cluster slot), its channel too; braces
    are refused."""
    async with backend() as (b, admin):
        await b.set("a", b"1")
        names = sorted(n for n in await admin.keys(f"{{{b.keyspace}}}:*") if isinstance(n, bytes))
        assert names == sorted([b.data_key, b.log_key, b.version_key, b.token_key, b.tokens_key])
        assert len({key_slot(name) for name in [*names, b.channel]}) == 1
        assert b.channel == f"{{{b.keyspace}}}:notices:0".encode()
    for bad in ("", "a{b", "}x"):
        with pytest.raises(ValueError, match="keyspace"):
            RedisBackend(bad, admin)


@pytest.mark.parametrize(
    ("decode_responses", "protocol"), [(False, 2), (True, 2), (False, 3), (True, 3)], ids=str
)
async def test_any_client_decoding_and_protocol_reads_bytes(decode_responses: bool, protocol: int) -> None:
    """Clients with decode_responses=True or RESP3 work untouched: values stay bytes, even non-UTF-8."""
    async with backend(decode_responses=decode_responses, protocol=protocol) as (b, _):
        first = await b.set("bin", b"\xff\xfe\x00")
        async with b.subscribe() as subscription:
            second = await b.set("k/é", b"\x80")
            assert await anext(aiter(subscription)) == second
        assert second.prev_token == first.token
        assert (await b.load()).changes == {"bin": b"\xff\xfe\x00", "k/é": b"\x80"}
        assert (await b.load()).token == second.token
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
            with pytest.raises(DecodeError) as info:
                d["bad"]
            assert info.value.key == "bad"
            await d.set("bad", "fixed")
            assert d["bad"] == "fixed"


async def test_a_field_that_is_not_text_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """A hash field another tool wrote that is not UTF-8 is not a key of the dict (a key delete()
    would refuse), with a warning that names no value; every other key loads and can be cleared."""
    async with redis_keyspace() as (keyspace, clients):
        admin = clients[0]
        async with RedisDict[Any](keyspace, admin, heartbeat=0.2) as d:
            await d.set("good", 1)
            with caplog.at_level(logging.WARNING, logger="aiodurabledict"):
                await admin.hset(f"{{{keyspace}}}:data", b"\xff\xfe", b'"secret value"')
                await admin.zadd(f"{{{keyspace}}}:log", {b"\xff\xfe": 10**17})
                await admin.incr(f"{{{keyspace}}}:version")
                await d.sync()
                async with RedisDict[Any](keyspace, admin, watch=False) as fresh:
                    assert fresh == {"good": 1}
            assert d == {"good": 1}
            assert list(d) == ["good"]
            text = caplog.text
            assert "not UTF-8" in text
            assert "secret value" not in text
            await d.clear()
            assert d == {}


async def test_awkward_keys_survive_byte_for_byte() -> None:
    """Keys with '/', unicode, separators of the notice format, and 10,000 characters round-trip."""
    keys = ["a/b/c", "日本語", "🙂", "1:x=2-", "line\nbreak", "k" * 10_000, "é" * 10_000, "2 1 0 - - c\n"]
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
        owned = Redis.from_url(REDIS_URL, client_name="aiodurabledict-owned")
        async with RedisDict[Any](keyspace, owned, owns_client=True) as d:
            assert "aiodurabledict-owned" in [c.get("name") for c in await client.client_list()]
            assert d["a"] == 1
        # Seen from the server: no connection of the owned client's is left.
        names = [c.get("name") for c in await client.client_list()]
        assert "aiodurabledict-owned" not in names


async def test_cancelled_calls_leave_the_client_usable() -> None:
    """Cancelling writes at any point never leaves a stray reply for the next command on the client."""
    async with backend() as (b, _admin):
        rng = random.Random(3)
        for i in range(60):
            task = asyncio.create_task(b.set(f"k{i}", b"%d" % i))
            await asyncio.sleep(rng.random() * 0.002)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            probe = f"{{{b.keyspace}}}:probe{i}"
            assert await b.client.set(probe, i) is True
            assert await b.client.get(probe) == b"%d" % i
        content = (await b.load()).changes
        assert all(content[k] == k[1:].encode() for k in content)


async def test_options_are_validated() -> None:
    """Bad limits are refused at construction, before any I/O."""
    client = Redis.from_url(REDIS_URL)
    try:
        with pytest.raises(ValueError, match="limit"):
            RedisBackend("x", client, tombstone_limit=-1)
        with pytest.raises(ValueError, match="limit"):
            RedisBackend("x", client, notice_value_limit=-1)
        with pytest.raises(ValueError, match="limit"):
            RedisBackend("x", client, history_limit=0)
        with pytest.raises(ValueError, match="wait"):
            RedisDict[Any]("x", client, wait_replicas=-1)
        assert isinstance(RedisDict[Any]("x", client), AsyncDurableDict)
    finally:
        await client.aclose()
