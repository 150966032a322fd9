"""Starting while the store is down: bootstrap values and the local snapshot file.

Without either, open() fails fast as before. With one, open() succeeds on those values, reports the
dict interrupted (or stale), and goes live on the store's content the moment the store answers:
neither is ever trusted over the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from aiodurabledict import BackendError, Health, MemoryDict, MemoryStore, StaleError
from aiodurabledict.testing.conformance import eventually


async def test_without_a_fallback_open_fails_fast() -> None:
    """The default stays: a store that cannot be reached makes open() raise BackendError."""
    store = MemoryStore()
    store.failing = True
    with pytest.raises(BackendError):
        await MemoryDict(store).open()


async def test_bootstrap_values_serve_until_the_store_answers() -> None:
    """open() succeeds on the defaults while the store is down, says interrupted with the cause,
    and takes the store's content (defaults it lacks disappear) once it answers."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False) as writer:
        await writer.update(a="stored", c=3)
    store.failing = True
    async with MemoryDict(store, heartbeat=0.05, bootstrap={"a": "default", "b": 2}) as d:
        assert d == {"a": "default", "b": 2}
        assert await d.get("a") == "default"
        status = d.status
        assert status.state is Health.INTERRUPTED
        assert "failing" in (status.error or "")
        store.failing = False
        await d.wait_live(timeout=5)
        assert d == {"a": "stored", "c": 3}
        assert d.version == store.version


async def test_bootstrap_values_are_stale_at_once_under_max_staleness() -> None:
    """Defaults were never confirmed: with max_staleness set, checking reads raise StaleError at once
    while the cached view still serves them."""
    store = MemoryStore()
    store.failing = True
    async with MemoryDict(store, heartbeat=0.05, max_staleness=60, bootstrap={"a": 1}) as d:
        assert d.status.state is Health.STALE
        assert d["a"] == 1
        with pytest.raises(StaleError):
            await d.get("a")


async def test_the_snapshot_file_carries_the_last_confirmed_content(tmp_path: Path) -> None:
    """The snapshot is written (owner-readable only, atomically), a dict opened while the store is
    down serves it at its version, and the store's newer content replaces it once it answers."""
    path = tmp_path / "settings.snapshot"
    store = MemoryStore()
    async with MemoryDict(store, snapshot=path) as d:
        await d.update(a=1, b=2)
        await eventually(lambda: path.exists() and json.loads(path.read_text())["version"] == d.version)
        written = d.version
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["settings.snapshot"]
    async with MemoryDict(store, watch=False) as other:
        await other.pop("b")
        await other.set("c", 3)
    store.failing = True
    async with MemoryDict(store, heartbeat=0.05, snapshot=path, max_staleness=3600) as d:
        assert d == {"a": 1, "b": 2}
        assert d.version == written
        assert d.status.state is Health.INTERRUPTED
        store.failing = False
        await d.wait_live(timeout=5)
        assert d == {"a": 1, "c": 3}
    assert json.loads(path.read_text())["version"] == store.version


async def test_a_damaged_snapshot_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot that cannot be read is logged and ignored: the bootstrap values serve instead."""
    path = tmp_path / "snapshot"
    path.write_text('{"format": 1, "version": "x"')
    store = MemoryStore()
    store.failing = True
    async with MemoryDict(store, watch=False, snapshot=path, bootstrap={"k": "default"}) as d:
        assert d == {"k": "default"}
    assert any("ignoring the snapshot" in r.getMessage() for r in caplog.records)


async def test_without_a_watcher_the_next_sync_reaches_the_store(tmp_path: Path) -> None:
    """watch=False: opened on defaults, the first sync() after the store is back loads its content."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False) as writer:
        await writer.set("k", "stored")
    store.failing = True
    async with MemoryDict(store, watch=False, bootstrap={"k": "default"}) as d:
        assert d["k"] == "default"
        store.failing = False
        await asyncio.sleep(1.1)  # past the fail-fast window that follows a failure
        await d.sync()
        assert d["k"] == "stored"
        assert d.status.state is Health.LIVE
