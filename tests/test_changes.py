"""Change streams are bounded and never lose silently; abandoned ones cost nothing.

(Found by hostile testing: 5 ``async for`` loops left with ``break`` and 20,000 writes queued 100,010
changes, +8.8 MB; one stream nobody read grew a watcher from 32 to 55 MB in 10 s.)
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from typing import Any

from aiodurabledict import MISSING, Change, MemoryDict, MemoryStore


async def test_a_consumer_that_never_reads_stays_bounded_and_learns_the_loss() -> None:
    """100,000 changes into a stream nobody reads: memory stays bounded by the buffer, and the
    consumer, when it reads, gets what was buffered, then one marker counting every change dropped."""
    async with MemoryDict(watch=False) as d:
        stream = d.changes(buffer=100)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(100):
                await d.update({f"k{i}-{j}": j for j in range(1000)})
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        got = [await anext(stream) for _ in range(101)]
    assert [c.lost for c in got[:100]] == [0] * 100
    marker = got[100]
    assert marker.lost == 100_000 - 100
    assert (marker.key, marker.old, marker.new) == ("", MISSING, MISSING)
    assert marker.version == d.version
    # The dict itself holds 100,000 keys (several MB); the stream adds only its 100 buffered changes.
    assert grown < 20 * 1024 * 1024


async def test_after_the_marker_the_stream_goes_on() -> None:
    """Once the consumer has read the marker, new changes flow again, in order."""
    async with MemoryDict(watch=False) as d:
        stream = d.changes(buffer=2)
        for i in range(5):
            await d.set("k", i)
        first = [await anext(stream) for _ in range(3)]
        assert [c.new for c in first[:2]] == [0, 1]
        assert first[2].lost == 3
        await d.set("k", "after")
        after = await anext(stream)
        assert (after.key, after.old, after.new, after.lost) == ("k", 4, "after", 0)


async def test_an_abandoned_loop_is_unregistered() -> None:
    """An ``async for`` left with ``break`` is unregistered once the stream is collected: later
    writes reach no stream and cost no memory."""
    async with MemoryDict(watch=False) as d:
        refs: list[weakref.ref[Any]] = []
        for n in range(5):
            stream = d.changes()
            refs.append(weakref.ref(stream))
            await d.set("k", n)
            async for _change in stream:
                break
            del stream
        gc.collect()
        assert all(r() is None for r in refs)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(20):
                await d.update({f"k{j}": i for j in range(1000)})
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 2 * 1024 * 1024


async def test_a_closed_stream_stops_at_once_and_a_dict_close_ends_every_stream() -> None:
    """aclose() on a stream unregisters it; closing the dict ends the others after their buffer."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False) as d:
        closed = d.changes()
        kept = d.changes()
        await closed.aclose()
        await d.set("k", 1)
        assert [c async for c in closed] == []
    assert [c async for c in kept] == [Change("k", MISSING, 1, d.version)]
