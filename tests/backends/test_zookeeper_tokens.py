"""ZooKeeper's commit tokens: where each range's ``prev_token`` comes from, and when it cannot match.

A range's ``prev_token`` is the store's token at the version asked about: from the stamp when one write
came since (its writer named the commit before it), from the log's entry at that version otherwise.
A version at which the store holds no commit gets a token no cache holds, so the dict reloads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aiodurabledict.backends.zookeeper import ZookeeperBackend
from aiodurabledict.backends.zookeeper.layout import parse_stamp
from aiodurabledict.backends.zookeeper.reads import NO_COMMIT
from aiodurabledict.backends.zookeeper.writes import UNKNOWN_PREV
from tests.stores.zookeeper import Requests, start_client, zookeeper_znode

pytestmark = pytest.mark.zookeeper


@asynccontextmanager
async def two_backends() -> AsyncIterator[tuple[str, ZookeeperBackend, ZookeeperBackend, Callable[[], Any]]]:
    """A fresh path and two started backends on it, each with a client of its own."""
    async with zookeeper_znode() as (path, clients):

        async def client() -> Any:
            made = await start_client()
            clients.append(made)
            return made

        mine, theirs = ZookeeperBackend(path, await client()), ZookeeperBackend(path, await client())
        await mine.start()
        await theirs.start()
        yield path, mine, theirs, client


async def test_load_and_an_unchanged_check_carry_the_token_of_the_last_commit() -> None:
    """load() and changes_since() of the current version return the last commit's token."""
    async with two_backends() as (_path, mine, theirs, _client):
        empty = await mine.load()
        assert empty.token is None  # the node was just created: no commit yet
        written = await theirs.set("k", b"1")
        loaded = await mine.load()
        assert (loaded.version, loaded.token) == (written.version, written.token)
        same = await mine.changes_since(loaded.version)
        assert (same.version, same.prev) == (loaded.version, loaded.version)
        assert same.token == same.prev_token == written.token


async def test_one_write_since_names_the_commit_before_it() -> None:
    """One write since the version: prev_token is the token at the version, from the stamp alone."""
    async with two_backends() as (_path, mine, theirs, _client):
        first = await theirs.set("a", b"1")
        second = await theirs.set("b", b"2")
        requests = Requests(mine.client)
        delta = await mine.changes_since(first.version)
        assert requests.count == 1
        assert (delta.prev, delta.prev_token) == (first.version, first.token)
        assert (delta.version, delta.token) == (second.version, second.token)
        assert delta.changes == {"b": b"2"}


async def test_several_writes_since_take_the_token_from_the_log() -> None:
    """Several writes since: the log's entry at the version gives prev_token, the newest its token."""
    async with two_backends() as (_path, mine, theirs, _client):
        first = await theirs.set("a", b"1")
        await theirs.set("b", b"2")
        last = await theirs.set("c", b"3")
        delta = await mine.changes_since(first.version)
        assert (delta.prev, delta.prev_token) == (first.version, first.token)
        assert (delta.version, delta.token) == (last.version, last.token)
        assert delta.changes == {"b": b"2", "c": b"3"}


async def test_a_version_with_no_commit_gets_a_token_that_cannot_match() -> None:
    """Asked about a version between two commits (another history's), the log says the store has no
    commit there: prev_token matches no cache, so the dict reloads. The node's creation is the empty
    dict, with no token."""
    async with two_backends() as (path, mine, theirs, client):
        created = (await mine.load()).version
        first = await theirs.set("a", b"1")
        zk = await client()
        await zk.create(f"{path}-elsewhere", b"")  # a transaction between the two commits
        await zk.delete(f"{path}-elsewhere")
        await theirs.set("b", b"2")
        await theirs.set("c", b"3")
        between = first.version + 1
        delta = await mine.changes_since(between)
        assert delta.prev == between
        assert delta.prev_token == NO_COMMIT
        from_creation = await mine.changes_since(created)
        assert (from_creation.prev, from_creation.prev_token) == (created, None)
        assert from_creation.changes == {"a": b"1", "b": b"2", "c": b"3"}


async def test_stamps_and_entries_written_before_tokens_are_read_without_one() -> None:
    """A stamp and log entries in the format of earlier releases: read, with no token."""
    async with two_backends() as (path, mine, _theirs, client):
        zk = await client()
        version = (await mine.load()).version
        # What an earlier release wrote for set("k", 1) and then set("j", 2).
        for name, value in (("k", b"1"), ("j", b"2")):
            await zk.create(f"{path}/{name}", value)
            await zk.create(f"{path}/.log/e", name.encode(), sequential=True)
            await zk.set(path, name.encode() + b"\n=" + value, -1)
        delta = await mine.changes_since(version)
        assert delta.changes == {"k": b"1", "j": b"2"}
        assert delta.token is None
        assert delta.prev_token is None
        loaded = await mine.load()
        assert loaded.token is None
        assert loaded.changes == {"k": b"1", "j": b"2"}


async def test_readings_carry_the_version_and_token_the_store_answered_at() -> None:
    """pop of an absent key, setdefault of a present one and a failed compare_and_set are readings
    at the store's version, with its token."""
    async with two_backends() as (_path, mine, theirs, _client):
        written = await theirs.set("k", b"1")
        popped, raw = await mine.pop("absent")
        kept, stored = await mine.setdefault("k", b"2")
        failed, swapped = await mine.compare_and_set("k", b"9", b"3")
        assert (raw, stored, swapped) == (None, b"1", False)
        for delta, changes in ((popped, {"absent": None}), (kept, {"k": b"1"}), (failed, {"k": b"1"})):
            assert delta.prev is None
            assert delta.changes == changes
            assert (delta.version, delta.token) == (written.version, written.token)


async def test_compare_and_set_is_guarded_by_the_version_it_read() -> None:
    """compare_and_set from many clients at once: every increment counts exactly once."""
    async with two_backends() as (path, mine, theirs, client):
        backends = [mine, theirs, ZookeeperBackend(path, await client())]
        await backends[2].start()
        await mine.set("n", b"0")

        async def bump(backend: ZookeeperBackend) -> None:
            for _ in range(10):
                while True:
                    _, current = await backend.setdefault("n", b"0")
                    _, swapped = await backend.compare_and_set("n", current, str(int(current) + 1).encode())
                    if swapped:
                        break

        await asyncio.gather(*(bump(b) for b in backends))
        assert (await mine.load()).changes == {"n": b"30"}


async def test_a_commit_whose_predecessor_is_unknown_says_so() -> None:
    """A write after another writer's is placed by the dict through a check: its prev is no version
    a cache holds. The next write, knowing what came before, names it."""
    async with two_backends() as (_path, mine, theirs, _client):
        await mine.load()
        mine_first = await mine.set("a", b"1")
        await theirs.set("b", b"1")
        blind = await mine.set("a", b"2")
        assert blind.prev == UNKNOWN_PREV
        assert mine_first.prev != UNKNOWN_PREV
        again = await mine.set("a", b"3")
        assert (again.prev, again.prev_token) == (blind.version, blind.token)


async def test_what_was_seen_on_a_broken_connection_is_not_claimed() -> None:
    """After the connection broke, a write names no commit before it until the node is read again
    on the new connection (a new connection may reach a server restored from a backup). The broken
    connection is noticed at once, not after the session's ping times out."""
    async with two_backends() as (_path, mine, _theirs, _client):
        first = await mine.set("a", b"1")
        session = mine.client.session
        old = session.conn
        old.writer.transport.abort()
        async with asyncio.timeout(8):  # the session timeout (40 s) and its ping are far longer
            blind = await mine.set("a", b"2")
        assert session.conn is not old
        assert blind.prev == UNKNOWN_PREV
        assert parse_stamp((await mine.client.get(mine.path))[0]).before is None
        read = await mine.changes_since(first.version)
        assert read.version == blind.version
        again = await mine.set("a", b"3")
        assert (again.prev, again.prev_token) == (blind.version, blind.token)
