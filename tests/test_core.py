"""What the core promises beyond the per-store contract, pinned on the in-process store.

The MemoryStore counts round trips and can drop notices, fail and freeze, which makes these facts
countable: single flight, free syncs with a live watcher, staleness bounds, monotonic versions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import sys
import threading
import time
from typing import Any

import pytest

from aiodurabledict import (
    MISSING,
    AsyncDurableDict,
    BackendError,
    Delta,
    InvalidKeyError,
    MemoryDict,
    MemoryStore,
    NotOpenError,
    StaleError,
)
from aiodurabledict.backends.memory import MemoryBackend
from aiodurabledict.testing.conformance import eventually


async def test_concurrent_syncs_share_checks_sent_after_they_called() -> None:
    """1,000 concurrent sync() calls make two round trips: the first caller's check, and one more,
    sent after all the others had called, which they share."""
    store = MemoryStore()
    store.latency = 0.01
    async with MemoryDict(store, watch=False) as d:
        before = store.round_trips
        await asyncio.gather(*(d.sync() for _ in range(1000)))
        assert store.round_trips - before == 2


async def test_reads_are_free_while_the_watcher_is_live_and_sync_checks() -> None:
    """With a live push watcher, autosync get() and sync(strict=False) make no round trip; sync()
    (read-after-commit) makes exactly one each."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=60) as d:
        await eventually(lambda: d.live)
        before = store.round_trips
        for _ in range(100):
            await d.sync(strict=False)
            await d.get("k")
        assert store.round_trips == before
        for _ in range(10):
            await d.sync()
        assert store.round_trips == before + 10


async def test_unchanged_sync_costs_one_round_trip_without_watcher() -> None:
    """Without a watcher each sync() is exactly one round trip (the delta query), changed or not."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False) as d, MemoryDict(store, watch=False) as writer:
        before = store.round_trips
        assert await d.sync() is False
        unchanged = store.round_trips - before
        await writer.set("k", 1)
        before = store.round_trips
        assert await d.sync() is True
        assert (unchanged, store.round_trips - before) == (1, 1)


async def test_lost_notices_are_recovered_by_the_heartbeat() -> None:
    """With every notice dropped, the heartbeat still brings another dict's writes."""
    store = MemoryStore()
    store.drop_notices = True
    async with MemoryDict(store, heartbeat=0.1) as reader, MemoryDict(store, watch=False) as writer:
        await writer.update(a=1, b=2)
        await eventually(lambda: reader == {"a": 1, "b": 2}, within=5)
        assert reader.version == writer.version


async def test_a_gap_in_notices_triggers_a_delta_sync() -> None:
    """A notice whose predecessor was lost makes the watcher fetch what lies between."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=60) as reader, MemoryDict(store, watch=False) as writer:
        await eventually(lambda: reader.status.connected)
        store.drop_notices = True
        await writer.set("lost", 1)
        store.drop_notices = False
        await writer.set("seen", 2)
        await eventually(lambda: reader == {"lost": 1, "seen": 2}, within=5)


async def test_a_write_ahead_of_the_cache_shows_with_everything_before_it() -> None:
    """Our write lands past versions the cache has not seen: set() checks the store before it
    returns, so the cache shows the write and what came before it, at the write's version."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False) as a, MemoryDict(store, watch=False) as b:
        await b.set("k", "from b")
        await b.set("other", 1)
        before = store.round_trips
        await a.set("k", "from a")
        assert store.round_trips - before == 2
        assert a == {"k": "from a", "other": 1}
        assert a.version == store.version


async def test_a_store_that_went_back_in_time_is_followed() -> None:
    """A store restored to an older version (lost writes): caches reload it, and new writes show."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.1) as reader, MemoryDict(store, watch=False) as writer:
        await writer.update(a=1)
        backup = (store.version, dict(store.items))
        for i in range(5):
            await writer.set("b", i)
        await eventually(lambda: reader == {"a": 1, "b": 4})
        store.rewind(*backup)
        await writer.set("c", 3)
        assert writer == {"a": 1, "c": 3}
        assert writer.version == store.version
        await eventually(lambda: reader == {"a": 1, "c": 3}, within=5)
        assert reader.version == store.version


async def test_trimmed_log_falls_back_to_a_full_reload() -> None:
    """A cache older than the store's change log reloads everything, deletions included."""
    store = MemoryStore(log_limit=2)
    async with MemoryDict(store, watch=False) as old, MemoryDict(store, watch=False) as writer:
        await writer.update({f"k{i}": i for i in range(5)})
        await old.sync()
        await writer.delete("k0")
        for i in range(5):
            await writer.set(f"n{i}", i)
        assert await old.sync() is True
        assert old == await writer.snapshot()
        assert "k0" not in old


async def test_reload_never_hides_a_key_from_other_threads() -> None:
    """While a full reload applies, a reader thread never sees a key that exists before and after go missing."""
    store = MemoryStore(log_limit=1)
    stop = threading.Event()
    misses = 0
    async with MemoryDict(store, watch=False) as d, MemoryDict(store, watch=False) as writer:
        await writer.update({f"k{i}": i for i in range(2000)})
        await d.sync()
        view = d.view

        def read() -> None:
            nonlocal misses
            while not stop.is_set():
                if "k1000" not in view:
                    misses += 1

        thread = threading.Thread(target=read)
        thread.start()
        try:
            for i in range(20):
                await writer.update({f"k{j}": i for j in range(0, 2000, 7)})
                await writer.set(f"extra{i}", i)
                await d.sync()
        finally:
            stop.set()
            thread.join()
        assert misses == 0
        assert d == await writer.snapshot()


async def test_store_down_serves_last_known_values() -> None:
    """With the store failing, reads serve the cache, sync() raises BackendError, status says so."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.1) as d:
        await d.set("k", 1)
        store.failing = True
        await eventually(lambda: not d.status.connected, within=5)
        assert d["k"] == 1
        assert await d.get("k") == 1
        with pytest.raises(BackendError) as info:
            await d.sync()
        assert info.value.__cause__ is not None
        status = d.status
        assert status.stale_since is not None
        assert status.error is not None
        store.failing = False
        await eventually(lambda: d.status.connected, within=5)


async def test_max_staleness_raises_after_the_bound() -> None:
    """Once the cache is unconfirmed for longer than max_staleness, get() and sync() raise StaleError."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.1, max_staleness=0.3) as d:
        await d.set("k", 1)
        await eventually(lambda: d.status.connected)
        store.failing = True
        await eventually(lambda: not d.status.connected, within=5)
        assert await d.get("k") == 1
        await asyncio.sleep(0.4)
        with pytest.raises(StaleError):
            await d.get("k")
        with pytest.raises(StaleError):
            await d.sync()
        assert d["k"] == 1
        store.failing = False
        await eventually(lambda: d.status.connected, within=5)
        assert await d.get("k") == 1


async def test_a_frozen_store_is_reported_within_the_heartbeat_bound() -> None:
    """A store that stops answering (no error, no reply) shows in status after heartbeat + check timeout."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.2, timeout=0.3) as d:
        await eventually(lambda: d.status.connected)
        frozen_at = time.monotonic()
        store.frozen = True
        await eventually(lambda: not d.status.connected, within=5)
        assert time.monotonic() - frozen_at < 5
        assert "did not answer" in (d.status.error or "")
        store.frozen = False
        await eventually(lambda: d.status.connected, within=5)


async def test_a_failed_write_leaves_the_cache_as_it_was() -> None:
    """When the store fails a write, the cache is unchanged and the error is a BackendError."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False) as d:
        await d.set("k", 1)
        store.failing = True
        with pytest.raises(BackendError):
            await d.set("k", 2)
        with pytest.raises(BackendError):
            await d.update({"k": 3, "j": 4})
        assert d == {"k": 1}
        store.failing = False
        assert await d.snapshot() == {"k": 1}


async def test_open_fails_cleanly_when_the_store_is_down() -> None:
    """open() on a failing store raises BackendError and leaves the dict closed."""
    store = MemoryStore()
    store.failing = True
    d = MemoryDict(store)
    with pytest.raises(BackendError):
        await d.open()
    with pytest.raises(NotOpenError):
        await d.get("k")
    store.failing = False
    async with d:
        assert len(d) == 0


async def test_a_forked_child_refuses_the_parents_dict() -> None:
    """A dict used in a forked child raises NotOpenError instead of serving a frozen copy."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    async with MemoryDict(watch=False) as d:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                asyncio.run(d.get("k"))
            except NotOpenError:
                code = 0
            except BaseException:  # noqa: BLE001 - any other outcome is a failure code
                code = 2
            os.write(write, bytes([code]))
            os._exit(0)
        os.close(write)
        answer = await asyncio.to_thread(os.read, read, 1)
        os.close(read)
        await asyncio.to_thread(os.waitpid, pid, 0)
        assert answer == b"\x00"
        assert await d.get("k") is None


async def test_never_closed_warns() -> None:
    """A dict finalised while open warns with a ResourceWarning; a closed one does not."""
    d = MemoryDict(watch=False)
    await d.open()
    with pytest.warns(ResourceWarning, match="never closed"):
        d.__del__()
    await d.aclose()
    d.__del__()
    gc.collect()


async def test_bad_options_are_refused() -> None:
    """Nonsense options fail at construction, before any I/O."""
    cases: list[dict[str, Any]] = [
        {"heartbeat": 0},
        {"timeout": -1},
        {"max_staleness": 0},
        {"poll_interval": 0},
    ]
    for opts in cases:
        with pytest.raises(ValueError, match=next(iter(opts))):
            MemoryDict(None, **opts)


async def test_a_backend_of_ones_own() -> None:
    """Any object with the backend protocol works behind AsyncDurableDict, polled when it cannot push."""

    class Polled:
        max_key_bytes = 100
        max_value_bytes = 1000
        poll_interval = 0.05

        def __init__(self, inner: MemoryBackend) -> None:
            self.inner = inner

        async def start(self) -> None: ...

        async def aclose(self) -> None: ...

        async def load(self) -> Delta:
            return await self.inner.load()

        async def changes_since(self, version: int) -> Delta:
            return await self.inner.changes_since(version)

        async def set(self, key: str, value: bytes) -> Delta:
            return await self.inner.set(key, value)

        async def pop(self, key: str) -> tuple[Delta, bytes | None]:
            return await self.inner.pop(key)

        async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
            return await self.inner.setdefault(key, value)

        async def update(self, items: Any) -> Delta:
            return await self.inner.update(items)

        async def clear(self) -> Delta:
            return await self.inner.clear()

        async def compare_and_set(
            self, key: str, expected: bytes | None, new: bytes | None
        ) -> tuple[Delta, bool]:
            return await self.inner.compare_and_set(key, expected, new)

    store = MemoryStore()
    async with (
        AsyncDurableDict[Any](Polled(MemoryBackend(store))) as a,
        AsyncDurableDict[Any](Polled(MemoryBackend(store))) as b,
    ):
        await a.set("k", 1)
        await eventually(lambda: b.view.get("k") == 1, within=5)
        from aiodurabledict import ValueTooLargeError

        with pytest.raises(ValueTooLargeError):
            await a.set("big", "x" * 2000)
        assert "big" not in await b.snapshot()


async def test_changes_report_missing_for_absent_keys() -> None:
    """The exported MISSING marks absence in Change.old/new and is falsy."""
    async with MemoryDict(watch=False) as d:
        stream = d.changes()
        await d.set("k", 0)
        change = await anext(stream)
        assert change.old is MISSING
        assert not MISSING
        assert repr(MISSING) == "MISSING"


def test_public_surface() -> None:
    """The names the package exports are exactly the documented ones, and each resolves."""
    import aiodurabledict

    expected = {
        "MISSING",
        "AsyncDurableDict",
        "Backend",
        "BackendError",
        "Change",
        "Codec",
        "DecodeError",
        "Delta",
        "DictOptions",
        "DroppableBackend",
        "DurableDictError",
        "EncodeError",
        "Health",
        "InvalidKeyError",
        "JSONCodec",
        "KeyReader",
        "MemoryDict",
        "MemoryStore",
        "Missing",
        "ModelDict",
        "NotOpenError",
        "PickleCodec",
        "PushBackend",
        "RawCodec",
        "RedisDict",
        "ReplicationError",
        "StaleError",
        "Status",
        "ValueTooLargeError",
        "ZookeeperDict",
        "new_token",
        "open_dict",
    }
    assert set(aiodurabledict.__all__) == expected
    for name in expected:
        assert getattr(aiodurabledict, name) is not None, name
    assert issubclass(aiodurabledict.StaleError, aiodurabledict.BackendError)
    assert sys.modules["aiodurabledict"].__version__


async def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    """A long outage writes one WARNING with its cause and one on recovery with its length; the
    retries in between are DEBUG; every line names the dict."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.05) as d:
        await eventually(lambda: d.live)
        with caplog.at_level(logging.DEBUG, logger="aiodurabledict"):
            store.failing = True
            await asyncio.sleep(1.0)
            store.failing = False
            await eventually(lambda: d.live, within=5)
    records = [r for r in caplog.records if r.name == "aiodurabledict"]
    warnings_ = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings_) == 2, warnings_
    assert "unreachable" in warnings_[0]
    assert "failing" in warnings_[0]
    assert re.search(r"again, after \d+\.\d s", warnings_[1])
    assert sum(r.levelno == logging.DEBUG for r in records) >= 3
    assert all("MemoryDict(MemoryBackend(" in r.getMessage() for r in records)


async def test_a_store_without_a_key_limit_takes_any_key_length() -> None:
    """``max_key_bytes = None`` means no limit of the store's: a 100,000-byte key round-trips, and
    the key checks that do not depend on a limit still hold."""
    backend = MemoryBackend(MemoryStore())
    # As a store of one's own may declare it (the protocol allows None).
    vars(backend)["max_key_bytes"] = None
    async with AsyncDurableDict[Any](backend) as d:
        key = "k" * 100_000
        await d.set(key, 1)
        assert d[key] == 1
        with pytest.raises(InvalidKeyError):
            await d.set("", 1)
