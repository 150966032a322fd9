"""One truth everywhere, on the in-process store: each defect that once left a cache wrong, pinned.

- sync() is read-after-commit, also while a watcher is live and its notices lag;
- a check shared by concurrent callers was sent after each of them called;
- a store that went back in time and then passed the cache's version again is reloaded;
- an absent pop racing a set of the same key never hides the key;
- a notice from outside can neither pin a key nor outlive one heartbeat;
- a write whose commit cannot be placed shows at once and is reconciled by a reload.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from aiodurabledict import AsyncDurableDict, Delta, MemoryDict, MemoryStore, RawCodec
from aiodurabledict.backends.memory import MemoryBackend
from aiodurabledict.testing.conformance import eventually


async def test_sync_sees_a_completed_write_while_notices_lag() -> None:
    """With a live watcher whose notices never arrive, sync() still shows another dict's completed
    write at once; autosync get() (free while live) may trail until the heartbeat."""
    store = MemoryStore()
    store.drop_notices = True
    async with MemoryDict(store, heartbeat=60) as reader, MemoryDict(store, watch=False) as writer:
        await eventually(lambda: reader.live)
        for i in range(5):
            await writer.set("k", i)
            assert await reader.sync() is True
            assert reader["k"] == i


class _GatedReads(MemoryBackend):
    """Reads the store at once, then holds the answer until ``gate`` opens: a check in flight."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.gate = asyncio.Event()
        self.gate.set()
        self.reached = asyncio.Event()

    async def changes_since(self, version: int) -> Delta:
        answer = await super().changes_since(version)
        self.reached.set()
        await self.gate.wait()
        return answer


async def test_a_check_sent_before_the_call_is_not_shared() -> None:
    """sync() called while an older check is in flight waits for a check sent after it was called,
    so it sees a commit that completed between the two."""
    store = MemoryStore()
    backend = _GatedReads(store)
    async with (
        AsyncDurableDict[Any](backend, watch=False) as reader,
        MemoryDict(store, watch=False) as writer,
    ):
        backend.gate.clear()
        backend.reached.clear()
        first = asyncio.create_task(reader.sync())
        await backend.reached.wait()
        await writer.set("k", 1)
        second = asyncio.create_task(reader.sync())
        await asyncio.sleep(0.01)
        backend.gate.set()
        assert await first is False
        assert await second is True
        assert reader["k"] == 1


async def test_a_store_that_went_back_and_moved_past_the_cache_is_reloaded() -> None:
    """The store loses its last writes (a failover to a lagging replica, a restored backup) and new
    writes reuse their versions and pass the caches' version: every cache ends equal to the store,
    the watching ones within heartbeats, the manual one at its next sync()."""
    store = MemoryStore()
    async with (
        MemoryDict(store, heartbeat=0.1) as watching,
        MemoryDict(store, watch=False) as manual,
        MemoryDict(store, watch=False) as writer,
    ):
        await writer.update(a=1)
        backup = (store.version, dict(store.items))
        for i in range(5):
            await writer.set(f"lost{i}", i)
        await manual.sync()
        await eventually(lambda: "lost4" in watching)
        lost_at = watching.version

        store.rewind(*backup)
        async with MemoryDict(store, watch=False) as other:
            for i in range(8):
                await other.set(f"new{i}", i)
        assert store.version > lost_at
        expected = {"a": 1, **{f"new{i}": i for i in range(8)}}
        await eventually(lambda: watching == expected, within=5)
        assert await manual.sync() is True
        assert manual == expected
        assert manual.version == watching.version == store.version
        # The dict that made the lost writes follows too, from its next write.
        await writer.set("after", 1)
        assert writer == {**expected, "after": 1}


async def test_going_back_in_time_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A cache that finds the store on another history says so at WARNING: never silent."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False) as d:
        await d.set("a", 1)
        backup = (store.version, dict(store.items))
        await d.set("b", 2)
        store.rewind(*backup)
        with caplog.at_level(logging.WARNING, logger="aiodurabledict"):
            await d.sync()
        assert d == {"a": 1}
        assert d.version == backup[0]
        assert any("history" in r.getMessage() for r in caplog.records)


class _SlowPop(MemoryBackend):
    """A pop that reads the store at once and answers only when ``gate`` opens."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.gate = asyncio.Event()
        self.reached = asyncio.Event()

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        answer = await super().pop(key)
        self.reached.set()
        await self.gate.wait()
        return answer


async def test_an_absent_pop_racing_a_set_never_hides_the_key() -> None:
    """A pops k and finds it absent; B sets k; A applies B's notice, then A's late answer arrives.
    The answer is a reading at the version the store answered at: it cannot remove the newer k."""
    store = MemoryStore()
    backend = _SlowPop(store)
    async with AsyncDurableDict[Any](backend, heartbeat=60) as a, MemoryDict(store, watch=False) as b:
        await eventually(lambda: a.live)
        popping = asyncio.create_task(a.pop("k", None))
        await backend.reached.wait()
        await b.set("k", 1)
        await eventually(lambda: "k" in a)
        backend.gate.set()
        assert await popping is None
        assert a["k"] == 1
        await a.sync()
        assert a == {"k": 1}


async def test_a_forged_notice_far_ahead_pins_nothing() -> None:
    """A notice from outside whose version is beyond anything the store will reach changes no key,
    and the dict's own writes, syncs and other dicts' writes all keep showing."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.2) as d, MemoryDict(store, watch=False) as writer:
        await eventually(lambda: d.live)
        await writer.set("k", "real")
        await eventually(lambda: d.view.get("k") == "real")
        store.publish(Delta(10**15, {"k": b'"forged"'}, prev=10**15 - 1, token="x", prev_token="y"))
        await asyncio.sleep(0.05)
        assert d["k"] == "real"
        await d.set("k", "mine")
        assert d["k"] == "mine"
        await writer.set("k", "theirs")
        await d.sync()
        assert d["k"] == "theirs"
        await d.clear()
        assert len(d) == 0


async def test_a_forged_notice_that_fits_lasts_at_most_one_heartbeat() -> None:
    """A notice forged to follow the cache exactly (by someone who read the channel) is applied, and
    undone by the next check: the store's version is behind it, so the store went back."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.2) as d, MemoryDict(store, watch=False) as writer:
        await eventually(lambda: d.live)
        await writer.set("k", "real")
        await eventually(lambda: d.view.get("k") == "real")
        v, t = d.version, store.token
        store.publish(Delta(v + 1, {"k": b'"forged"'}, prev=v, token="forged", prev_token=t))
        await eventually(lambda: d.view.get("k") == "forged", within=2)
        await eventually(lambda: d.view.get("k") == "real", within=2)
        assert d.version == store.version


class _FailAfterCommit(MemoryBackend):
    """Commits a set, then the store becomes unreachable (before anyone can ask what came before)."""

    async def set(self, key: str, value: bytes) -> Delta:
        delta = await super().set(key, value)
        self.store.failing = True
        return delta


async def test_a_write_that_cannot_be_placed_shows_and_is_reconciled() -> None:
    """Our commit lands past versions we have not seen and the store fails right after: the write
    still shows (read your writes), the dict is not live, and the next sync reloads everything."""
    store = MemoryStore()
    backend = _FailAfterCommit(store)
    async with AsyncDurableDict[Any](backend, watch=False) as a, MemoryDict(store, watch=False) as b:
        await b.set("other", 1)
        await a.set("k", "mine")
        assert a["k"] == "mine"
        assert "other" not in a
        store.failing = False
        await asyncio.sleep(1.1)  # past the fail-fast window
        await a.sync()
        assert a == {"k": "mine", "other": 1}
        assert a.version == store.version


async def test_compare_and_set_matches_an_equal_value_stored_with_other_bytes() -> None:
    """Another writer stored an equal value with other formatting (key order, spaces): the swap
    still happens, against the exact stored bytes."""
    store = MemoryStore()
    async with MemoryDict(store, codec=RawCodec(), watch=False) as raw, MemoryDict(store, watch=False) as d:
        await raw.set("k", b'{"b": 1, "a": [2, 3]}')
        await d.sync()
        assert await d.compare_and_set("k", {"a": [2, 3], "b": 1}, "next") is True
        assert d["k"] == "next"
        assert await d.compare_and_set("k", {"a": [2, 3], "b": 1}, "again") is False
