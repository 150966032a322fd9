"""Redis notices and the shared subscription: the notice format and its parser, what each commit
announces, channels namespaced by database, and one pub/sub connection for every dict on a client."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import uuid
import warnings
from contextlib import AsyncExitStack, suppress
from typing import Any

import pytest

pytest.importorskip("redis")

from redis.asyncio import Redis

from aiodurabledict import Delta
from aiodurabledict.backends.redis import RedisBackend, RedisDict, parse_notice
from aiodurabledict.backends.redis.notices import encode_notice
from aiodurabledict.testing.conformance import eventually
from tests.backends.test_redis import B, backend
from tests.stores.redis import REDIS_URL, drop_keyspace, redis_keyspace
from tests.wrappers import spied

pytestmark = pytest.mark.redis


async def test_notices_carry_small_changes_and_announce_large_ones() -> None:
    """A notice carries the commit (tokens included) up to notice_value_limit; a larger commit is
    announced incomplete, with its versions and tokens."""
    async with backend(notice_value_limit=100) as (b, _), b.subscribe() as subscription:
        notices = aiter(subscription)
        small = await b.set("small", b"x" * 10)
        assert await anext(notices) == small
        large = await b.set("large", b"x" * 200)
        assert await anext(notices) == Delta(
            B + 2, prev=B + 1, complete=False, token=large.token, prev_token=small.token
        )
        popped, _ = await b.pop("small")
        assert await anext(notices) == popped


async def test_no_op_writes_publish_nothing() -> None:
    """setdefault on an existing key, pop of a missing key, a failed compare_and_set and clear of an
    empty dict publish nothing."""
    async with backend() as (b, _):
        await b.set("a", b"1")
        async with b.subscribe() as subscription:
            notices = aiter(subscription)
            await b.setdefault("a", b"2")
            await b.pop("missing")
            await b.compare_and_set("a", b"9", b"3")
            await b.update({})
            written = await b.set("b", b"2")  # the next notice is this one: nothing came before it
            assert await anext(notices) == written
            cleared = await b.clear()
            assert await anext(notices) == cleared
            await b.clear()
            last = await b.set("c", b"3")
            assert await anext(notices) == last


ALPHABET = ["a", "/", ":", "=", "-", "\n", " ", "0", "9", "é", "日", "🙂", "{", "}", "\\", "\x00"]


def _random_key(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))


async def test_notices_round_trip_arbitrary_keys_and_values() -> None:
    """Fuzz: notices built by the Lua scripts parse back to exactly the commits the writes returned."""
    rng = random.Random(20240601)
    async with backend(notice_value_limit=1 << 20) as (b, _), b.subscribe() as subscription:
        notices = aiter(subscription)
        for _ in range(200):
            items = {_random_key(rng): rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 5))}
            if rng.random() < 0.3:
                expected, _ = await b.pop(rng.choice(list(items)))
            else:
                expected = await b.update(items)
            if expected.prev is not None:
                assert await anext(notices) == expected


def test_notice_parser_round_trips_and_rejects_garbage() -> None:
    """parse_notice inverts the format; any other bytes, and the first format, raise ValueError."""
    rng = random.Random(7)
    for _ in range(2000):
        changes = {
            _random_key(rng): None if rng.random() < 0.2 else rng.randbytes(rng.randint(0, 30))
            for _ in range(rng.randint(0, 6))
        }
        version = rng.randint(1, 2**53)
        token = rng.choice([None, "0123456789abcdef"])
        delta = Delta(version, changes, prev=version - 1, token="fedcba9876543210", prev_token=token)
        data = encode_notice(delta)
        assert parse_notice(data) == delta
        cut = data[: rng.randint(0, len(data))]
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        for garbage in (cut, bytes(flipped), rng.randbytes(rng.randint(0, 40))):
            with suppress(ValueError):
                parse_notice(garbage)
    assert parse_notice(b"2 5 4 ab - i\n") == Delta(5, prev=4, complete=False, token="ab")
    for old in (b"1 5 4 i\n", b"1 5 4 c\n1:k-"):
        with pytest.raises(ValueError, match="header"):
            parse_notice(old)


async def test_a_malformed_notice_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Someone else's message on the channel (old format or garbage) is skipped, the subscription
    stays, and the next commit still arrives."""
    async with backend() as (b, admin), b.subscribe() as subscription:
        notices = aiter(subscription)
        with caplog.at_level(logging.WARNING, logger="aiodurabledict"):
            await admin.publish(b.channel, b"1 5 4 c\n1:k-")
            await admin.publish(b.channel, b"garbage")
            written = await b.set("k", b"1")
            assert await anext(notices) == written
        assert caplog.text.count("malformed notice") == 2


async def test_channels_are_namespaced_by_database() -> None:
    """Two dicts with the same keyspace on databases 0 and 1 of one server never hear each other
    (pub/sub is server-wide; defect 7 of the consistency issue: they wedged each other)."""
    keyspace = f"test:{uuid.uuid4().hex}"
    db0, db1 = (
        Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/0"),
        Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/1"),
    )
    try:
        b0, b1 = RedisBackend(keyspace, db0), RedisBackend(keyspace, db1)
        assert b0.channel != b1.channel
        heard1 = spied(
            RedisBackend(keyspace, Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/1"), owns_client=True)
        )
        async with (
            RedisDict[Any](keyspace, db0, heartbeat=60) as on0,
            RedisDict[Any](keyspace, db1, heartbeat=60) as on1,
        ):
            from aiodurabledict import AsyncDurableDict

            async with AsyncDurableDict[Any](heard1, heartbeat=60) as spy1:
                await eventually(lambda: on0.live and on1.live and spy1.live)
                for i in range(20):
                    await on0.set("k", i)
                await on1.set("mine", True)
                await eventually(lambda: spy1 == {"mine": True})
                assert [n.changes for n in heard1.notices] == [{"mine": b"true"}]
                assert on1 == {"mine": True}
                assert on0 == {"k": 19}
                await on1.set("k", "one")
                await eventually(lambda: spy1 == {"mine": True, "k": "one"})
                assert on0 == {"k": 19}
    finally:
        for client in (db0, db1):
            await drop_keyspace(client, keyspace)
            await client.aclose()


async def _connections(admin: Redis, name: str) -> dict[str, int]:
    """Connections named ``name``, counted by kind (normal, pubsub) with CLIENT LIST."""
    counts: dict[str, int] = {}
    for entry in await admin.client_list():
        if entry.get("name") == name:
            kind = "pubsub" if int(entry.get("sub", 0)) or int(entry.get("ssub", 0) or 0) else "normal"
            counts[kind] = counts.get(kind, 0) + 1
    return counts


async def test_many_dicts_on_one_client_share_one_subscription() -> None:
    """150 dicts on one client whose pool holds 20 connections: one pub/sub connection serves them
    all (counted with CLIENT LIST), every watcher is live and every write succeeds (issue 9: 110
    dicts made 'Too many connections')."""
    name = f"many-{uuid.uuid4().hex[:8]}"
    async with redis_keyspace() as (keyspace, clients):
        admin = clients[0]
        client = Redis.from_url(REDIS_URL, max_connections=20, client_name=name)
        clients.append(client)
        async with AsyncExitStack() as stack:
            dicts = [
                await stack.enter_async_context(RedisDict[Any](f"{keyspace}:{i % 30}", client, heartbeat=30))
                for i in range(150)
            ]
            await eventually(lambda: all(d.live for d in dicts), within=30)
            counts = await _connections(admin, name)
            assert counts.get("pubsub") == 1
            assert counts.get("normal", 0) <= 20
            channels = await admin.pubsub_channels(f"{{{keyspace}:*")
            assert len(channels) == 30
            for start in range(0, 50, 10):  # ten at a time: the pool's 20 connections are the user's
                await asyncio.gather(*(dicts[i].set("k", i) for i in range(start, start + 10)))
            for i, d in enumerate(dicts[:30]):
                final = max(j for j in range(50) if j % 30 == i)
                await eventually(lambda d=d, final=final: d.view.get("k") == final)  # type: ignore[misc]
        for _ in range(200):
            if not (await _connections(admin, name)).get("pubsub"):
                break
            await asyncio.sleep(0.01)
        assert not (await _connections(admin, name)).get("pubsub")
        assert await admin.pubsub_channels(f"{{{keyspace}:*") == []
        for i in range(30):
            await drop_keyspace(admin, f"{keyspace}:{i}")


async def test_a_dict_closing_leaves_the_others_subscribed() -> None:
    """Dicts come and go on one client: closing one unsubscribes only its channel once it is the last
    on it; the others keep receiving notices."""
    async with redis_keyspace() as (keyspace, clients):
        client = Redis.from_url(REDIS_URL)
        writer_client = Redis.from_url(REDIS_URL)
        clients += [client, writer_client]
        async with RedisDict[Any](keyspace, writer_client, watch=False) as writer:
            a = RedisDict[Any](keyspace, client, heartbeat=60)
            other = RedisDict[Any](keyspace + ":other", client, heartbeat=60)
            async with a, other:
                async with RedisDict[Any](keyspace, client, heartbeat=60) as b:
                    await eventually(lambda: a.live and b.live and other.live)
                    await writer.set("k", 1)
                    await eventually(lambda: a.view.get("k") == b.view.get("k") == 1)
                assert (await clients[0].pubsub_numsub(a.backend.channel))[0][1] == 1  # type: ignore[attr-defined]
                await writer.set("k", 2)
                await eventually(lambda: a.view.get("k") == 2)
                assert a.live


async def test_aclose_right_after_a_large_clear_is_prompt() -> None:
    """aclose() right after clearing thousands of keys ends the watcher at once (issue 9: it blocked
    10 s and left the watcher running), and no task is destroyed pending."""
    loop = asyncio.get_running_loop()
    destroyed: list[str] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: destroyed.append(str(context.get("message"))))
    try:
        async with redis_keyspace() as (keyspace, clients):
            for round_ in range(3):
                client = Redis.from_url(REDIS_URL)
                clients.append(client)
                async with RedisDict[Any](keyspace, clients[0], watch=False) as filler:
                    await filler.update({f"k{i}": "x" * 50 for i in range(20_000)})
                before = asyncio.all_tasks()
                d = RedisDict[Any](keyspace, client, heartbeat=0.2, notice_value_limit=0)
                await d.open()
                await eventually(lambda d=d: d.live)  # type: ignore[misc]
                await d.clear()
                async with asyncio.timeout(3):
                    await d.aclose()
                await asyncio.sleep(0)
                assert {t for t in asyncio.all_tasks() - before if not t.done()} == set(), round_
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gc.collect()
        assert not [m for m in destroyed if "destroyed" in m]
    finally:
        loop.set_exception_handler(handler)
