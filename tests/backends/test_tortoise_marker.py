"""The memcached marker: an unchanged sync() reads only memcached, the marker names the latest commit
(version and token), and its rules keep sync() read-after-commit when writers, readers and flushes
interleave."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from aiodurabledict.backends.tortoise.marker import Mark, Marker, Seen
from aiodurabledict.testing.conformance import eventually
from tests.backends.tortoise_kit import (
    DIALECTS,
    Counter,
    backend_of,
    database,
)
from tests.servers import free_port, host_port, require_memcached
from tests.stores.tortoise import Setting, tortoise_store
from tests.wrappers import deaf


@pytest.fixture(params=DIALECTS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test runs on a SQLite file, a PostgreSQL schema and a MySQL database of its own."""
    async with database(request.param, tmp_path) as url:
        yield url


pytestmark = pytest.mark.memcached


@pytest.fixture
async def mc() -> AsyncIterator[Any]:
    """A client of the shared memcached."""
    import aiomcache

    client = aiomcache.Client(*host_port(require_memcached(), 11211))
    try:
        yield client
    finally:
        await client.close()


def marker_of(d: Any) -> Marker:
    marker = backend_of(d).marker
    assert marker is not None
    return marker


async def test_unchanged_sync_reads_only_the_marker(db_url: str, mc: Any) -> None:
    """With memcached, sync() that finds the marker at the cache's commit sends no query at all; the
    marker holds the version and the token; a remote write costs one query."""
    async with AsyncExitStack() as stack:
        make = await stack.enter_async_context(tortoise_store(db_url, model=Setting))
        d = await stack.enter_async_context(await make(watch=False, cache=mc))
        w = await stack.enter_async_context(await make(watch=False, cache=mc))
        await w.set("k", 1)
        counter = Counter()
        await counter.attach(backend_of(d).client())
        await d.sync()  # the first check confirms against the database
        before = counter.count
        for _ in range(5):
            assert await d.sync() is False
        assert counter.count == before
        token = (await backend_of(w).load()).token
        assert await mc.get(marker_of(d).key) == f"{d.version}:{token}".encode()
        await w.set("k", 2)
        assert await d.sync() is True
        assert d["k"] == 2
        assert counter.count - before == 1


async def test_a_wrong_missing_or_claimed_marker_is_put_right(db_url: str, mc: Any) -> None:
    """Missing, behind, ahead, of another history, garbage or a stale claim: a check asks the
    database and puts the marker to the database's version and token."""
    async with AsyncExitStack() as stack:
        make = await stack.enter_async_context(tortoise_store(db_url, model=Setting))
        d = await stack.enter_async_context(await make(watch=False, cache=mc, confirm_interval=3600))
        await d.set("a", 1)
        await d.set("b", 2)
        backend = backend_of(d)
        truth = (await backend.load()).token
        key = marker_of(d).key
        for wrong in (None, b"1:x", b"99:y", b"2:othertoken", b"garbage", b"pending"):
            if wrong is None:
                await mc.delete(key)
            else:
                await mc.set(key, wrong)
            await backend.changes_since(d.version)
            assert await mc.get(key) == f"2:{truth}".encode(), wrong


async def test_a_commit_that_never_reached_the_marker_is_found_by_the_confirm(db_url: str, mc: Any) -> None:
    """A commit whose writer never raised the marker (it had no memcached, or died) is still found:
    a check asks the database once ``confirm_interval`` has passed (every NOTIFY lost too)."""
    async with AsyncExitStack() as stack:
        make = await stack.enter_async_context(tortoise_store(db_url, model=Setting))
        reader = await stack.enter_async_context(
            await make(cache=mc, confirm_interval=0.3, poll_interval=0.02, heartbeat=0.05, wrap=deaf)
        )
        marked = await stack.enter_async_context(await make(watch=False, cache=mc))
        unmarked = await stack.enter_async_context(await make(watch=False))
        await marked.set("k", 1)
        await eventually(lambda: reader.view.get("k") == 1)
        await unmarked.set("k", 2)
        await eventually(lambda: reader.view.get("k") == 2, within=5)
        token = (await backend_of(marked).load()).token
        assert await mc.get(marker_of(marked).key) == f"2:{token}".encode()


async def test_a_writer_whose_memcached_is_gone_warns_and_readers_confirm(
    db_url: str, mc: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer that can reach no memcached still writes; it says that readers trusting the marker
    may miss the commit until they confirm, and they do find it then."""
    import aiomcache

    nowhere = aiomcache.Client("127.0.0.1", free_port())
    async with AsyncExitStack() as stack:
        stack.push_async_callback(nowhere.close)
        make = await stack.enter_async_context(tortoise_store(db_url, model=Setting))
        reader = await stack.enter_async_context(await make(watch=False, cache=mc, confirm_interval=0.5))
        writer = await stack.enter_async_context(await make(watch=False, cache=nowhere))
        await reader.sync()
        with caplog.at_level(logging.WARNING, logger="aiodurabledict"):
            await writer.set("k", 1)
        assert "could not be marked" in caplog.text
        # Until the confirm, the reader may trust the marker; from then on it sees the commit.
        await asyncio.sleep(0.6)
        await reader.sync()
        assert reader["k"] == 1


async def test_a_late_writer_after_a_flush_never_marks_older_news(mc: Any) -> None:
    """Writer A commits v5 but marks it late; writer B commits and marks v6; memcached is flushed
    (the mark of v6 is lost). A's late mark must not make v5 look like the latest commit: writers
    never create a missing marker."""
    marker = Marker(mc, b"aiodurabledict:test-late-writer", timeout=1.0)
    await mc.delete(marker.key)
    try:
        assert await marker.raise_to(Mark(6, "t6"))  # missing: left missing
        assert await mc.get(marker.key) is None
        await mc.set(marker.key, Mark(4, "t4").encode())
        assert await marker.raise_to(Mark(6, "t6"))
        assert await mc.get(marker.key) == b"6:t6"
        await mc.delete(marker.key)  # what a flush (or an eviction) does to it
        assert await marker.raise_to(Mark(5, "t5"))
        assert await mc.get(marker.key) is None
        await mc.set(marker.key, b"6:t6")
        assert await marker.raise_to(Mark(5, "t5"))
        assert await mc.get(marker.key) == b"6:t6"
    finally:
        marker.close()
        await mc.delete(marker.key)


async def test_a_commit_spoils_a_readers_claim(mc: Any) -> None:
    """A reader found no marker and claimed it before asking the database; a writer commits meanwhile:
    the writer spoils the claim, so the reader's older news is not written."""
    reader = Marker(mc, b"aiodurabledict:test-claim", timeout=1.0)
    writer = Marker(mc, b"aiodurabledict:test-claim", timeout=1.0)
    await mc.delete(reader.key)
    try:
        seen = await reader.read()
        assert seen == Seen(None, None)
        claim = await reader.claim(seen)
        assert claim is not None
        assert claim.cas is not None
        assert await writer.raise_to(Mark(7, "t7"))
        await reader.repair(Mark(6, "t6"), claim)
        assert await mc.get(reader.key) is None
        # Unspoilt, the claim becomes what the database said.
        claim = await reader.claim(Seen(None, None))
        assert claim is not None
        await reader.repair(Mark(7, "t7"), claim)
        assert await mc.get(reader.key) == b"7:t7"
    finally:
        reader.close()
        writer.close()
        await mc.delete(reader.key)
