"""A dict's life under hostile use: racing opens and closes, forks, a second event loop, garbage.

Each test pins a defect found by hostile testing; they run on the in-process store, whose switches
(frozen, latency) make the races happen on demand.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import warnings
import weakref
from typing import Any

import pytest

from aiodurabledict import InvalidKeyError, MemoryDict, MemoryStore, NotOpenError
from aiodurabledict.testing.conformance import eventually
from tests.programs import run_python


def _watchers() -> set[asyncio.Task[Any]]:
    return {
        t for t in asyncio.all_tasks() if t.get_name().startswith("aiodurabledict watcher") and not t.done()
    }


async def test_concurrent_opens_share_one_opening_and_one_watcher() -> None:
    """gather(d.open(), d.open()) opens once: one watcher, and none left after aclose()."""
    store = MemoryStore()
    store.latency = 0.02
    d = MemoryDict(store)
    before = _watchers()
    opened = await asyncio.gather(d.open(), d.open(), d.open())
    assert all(o is d for o in opened)
    assert len(_watchers() - before) == 1
    await d.aclose()
    await asyncio.sleep(0)
    assert _watchers() - before == set()


async def test_close_during_open_leaves_the_dict_closed() -> None:
    """aclose() while open() is in flight waits for it; open() then raises NotOpenError and the dict
    stays closed, with no watcher started."""
    store = MemoryStore()
    store.frozen = True
    d = MemoryDict(store)
    before = _watchers()
    opening = asyncio.create_task(d.open())
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(d.aclose())
    await asyncio.sleep(0.05)
    assert not closing.done()
    store.frozen = False
    await closing
    with pytest.raises(NotOpenError, match="closed while it was opening"):
        await opening
    assert not d.status.open
    assert _watchers() - before == set()
    with pytest.raises(NotOpenError):
        await d.open()


async def test_close_during_another_tasks_sync_is_not_open_error() -> None:
    """A sync() waiting on the watcher's check when another task closes the dict raises NotOpenError,
    never a CancelledError in a task nobody cancelled."""
    store = MemoryStore()
    d = MemoryDict(store, heartbeat=0.05, timeout=30)
    await d.open()
    await eventually(lambda: d.live)
    store.frozen = True
    await asyncio.sleep(0.2)  # the watcher's heartbeat check now waits on the frozen store
    syncing = asyncio.create_task(d.sync())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await d.aclose()
    with pytest.raises(NotOpenError):
        await asyncio.wait_for(syncing, 5)
    assert time.monotonic() - started < 5
    assert not syncing.cancelled()
    store.frozen = False


async def test_a_closed_dict_cannot_be_opened_again() -> None:
    """A closed dict says so instead of reopening silently (its client may be closed)."""
    async with MemoryDict(watch=False) as d:
        await d.set("k", 1)
    with pytest.raises(NotOpenError, match="cannot be opened again"):
        await d.open()


async def test_a_failed_open_may_be_retried() -> None:
    """open() on a store that is down raises BackendError and leaves the dict openable."""
    store = MemoryStore()
    store.failing = True
    d = MemoryDict(store, watch=False)
    with pytest.raises(Exception, match="failing"):
        await d.open()
    store.failing = False
    async with d:
        await d.set("k", 1)
        assert d["k"] == 1


def test_a_forked_child_refuses_synchronous_reads_and_closes_at_once() -> None:
    """In a forked child, d[k], k in d, len(d) and d.view refuse (NotOpenError) instead of serving
    the frozen copy; aclose() there is instant and leaves the parent's dict working."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    code = r"""
import asyncio, os, sys, time
from aiodurabledict import MemoryDict, NotOpenError

async def main():
    async with MemoryDict(heartbeat=0.1) as d:
        await d.set("k", 1)
        view = d.view
        pid = os.fork()
        if pid == 0:
            refused = 0
            for read in (lambda: d["k"], lambda: "k" in d, lambda: len(d), lambda: view["k"], lambda: list(d)):
                try:
                    read()
                except NotOpenError:
                    refused += 1
            started = time.monotonic()
            asyncio.new_event_loop().run_until_complete(d.aclose())
            took = time.monotonic() - started
            os._exit(0 if refused == 5 and took < 1.0 else 3)
        _, status = os.waitpid(pid, 0)
        await d.set("k", 2)
        assert d["k"] == 2 and await d.get("k") == 2
        print("child", os.waitstatus_to_exitcode(status))

asyncio.run(main())
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout


def test_a_dict_used_under_a_second_event_loop_refuses() -> None:
    """A dict opened under one asyncio.run() and used under another refuses (NotOpenError) instead
    of serving stale values as if live; its loop's end is reported as a ResourceWarning."""
    code = r"""
import asyncio, warnings
from aiodurabledict import MemoryDict, NotOpenError

d = MemoryDict(heartbeat=0.1)

async def first():
    await d.open()
    await d.set("k", 1)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    asyncio.run(first())
assert any(issubclass(w.category, ResourceWarning) for w in caught), caught

async def second():
    for call in (d.get("k"), d.sync(), d.set("k", 2)):
        try:
            await call
        except NotOpenError as exc:
            assert "event loop" in str(exc), exc
        else:
            raise AssertionError("served")
    try:
        d["k"]
    except NotOpenError:
        pass
    else:
        raise AssertionError("served a stale value")
    assert not d.status.connected
    await d.aclose()

asyncio.run(second())
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


async def test_an_abandoned_dict_is_collected_closed_and_warned_about() -> None:
    """An open dict nobody holds any more is collected while the loop runs (its watcher holds it
    weakly), warns with a ResourceWarning, and its watcher stops."""
    before = _watchers()
    d = MemoryDict(heartbeat=0.05)
    await d.open()
    await d.set("k", 1)
    ref = weakref.ref(d)
    assert len(_watchers() - before) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del d
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "never closed" in str(w.message) for w in caught)
    del caught  # the warning's source was the only thing left holding the dict
    gc.collect()
    assert ref() is None
    await eventually(lambda: not (_watchers() - before), within=5)


async def test_get_refuses_an_impossible_key_on_every_path() -> None:
    """get() of a key no store could hold raises InvalidKeyError with a live watcher as without one."""
    async with MemoryDict(heartbeat=60) as live, MemoryDict(watch=False) as manual:
        await eventually(lambda: live.live)
        for d in (live, manual):
            with pytest.raises(InvalidKeyError):
                await d.get("\ud800")
            with pytest.raises(InvalidKeyError):
                await d.get("")
            with pytest.raises(TypeError):
                await d.get(5)  # type: ignore[call-overload]
