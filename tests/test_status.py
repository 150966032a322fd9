"""Readiness and status as events: wait_live(), on_status() and status_changes()."""

from __future__ import annotations

import asyncio

import pytest

from aiodurabledict import Health, MemoryDict, MemoryStore, NotOpenError, Status
from aiodurabledict.testing.conformance import eventually


async def test_wait_live_returns_once_the_watcher_follows() -> None:
    """Right after open() the state may still be initializing; wait_live() returns when it is live."""
    store = MemoryStore()
    store.latency = 0.05
    async with MemoryDict(store) as d:
        assert d.status.state is Health.INITIALIZING
        await d.wait_live(timeout=5)
        status = d.status
        assert status.state is Health.LIVE
        assert status.connected
        assert d.live


async def test_a_dict_without_watcher_is_live_after_its_checks() -> None:
    """watch=False: live once open (the load was a successful check), interrupted after a failed one."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False) as d:
        await d.wait_live(timeout=1)
        store.failing = True
        with pytest.raises(Exception, match="failing"):
            await d.sync()
        interrupted = d.status.state
        store.failing = False
        await asyncio.sleep(1.1)  # past the fail-fast window
        await d.sync()
        assert (interrupted, d.status.state) == (Health.INTERRUPTED, Health.LIVE)


async def test_status_events_follow_an_outage_to_stale_and_back() -> None:
    """Listeners (registered before open) and a status stream hear: initializing, live, interrupted
    (with its cause), stale once max_staleness passed, live again, closed; each once."""
    store = MemoryStore()
    d = MemoryDict(store, heartbeat=0.05, max_staleness=0.3)
    heard: list[Status] = []
    unsubscribe = d.on_status(heard.append)
    stream = d.status_changes()
    async with d:
        await d.wait_live(timeout=5)
        store.failing = True
        await eventually(lambda: d.status.state is Health.STALE, within=5)
        store.failing = False
        await d.wait_live(timeout=5)
    states = [s.state for s in heard]
    assert states == [Health.LIVE, Health.INTERRUPTED, Health.STALE, Health.LIVE, Health.CLOSED]
    interrupted = heard[1]
    assert interrupted.error is not None
    assert "MemoryStoreError" in interrupted.error
    assert heard[2].since >= interrupted.since
    assert [s.state async for s in stream] == states
    unsubscribe()


async def test_wait_live_times_out_or_fails_when_the_dict_closes() -> None:
    """wait_live() raises TimeoutError while the store stays down, NotOpenError if the dict closes."""
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.05) as d:
        await d.wait_live(timeout=5)
        store.failing = True
        await eventually(lambda: d.status.state is Health.INTERRUPTED, within=5)
        with pytest.raises(TimeoutError):
            await d.wait_live(timeout=0.2)
        waiting = asyncio.create_task(d.wait_live())
        await asyncio.sleep(0.05)
    with pytest.raises(NotOpenError):
        await waiting
    assert d.status.state is Health.CLOSED
