"""Many dicts in one process on one PostgreSQL client (part of ``bench_tortoise``): the LISTEN
connections they use (one per database, shared), what opening them costs in time and memory, and the
time from one write to the last of them, against one raw NOTIFY -> LISTEN hop in the same run."""

from __future__ import annotations

import asyncio
import importlib
import time
import tracemalloc
from contextlib import AsyncExitStack
from typing import Any

from tortoise.context import TortoiseContext

from aiodurabledict import AsyncDurableDict
from aiodurabledict.backends.tortoise import ModelDict
from aiodurabledict.backends.tortoise.listener import APPLICATION_NAME
from aiodurabledict.backends.tortoise_models import DurableEntry
from benchmarks._harness import Report, timing_of

__all__ = ["fan_out"]

GROUP = "tortoise"
# asyncpg ships no type information.
asyncpg: Any = importlib.import_module("asyncpg")


async def _arrived(d: AsyncDurableDict[Any], value: int) -> None:
    changes = d.changes()
    try:
        if d.view.get("k") == value:
            return
        async for change in changes:
            if change.key == "k" and change.new == value:
                return
    finally:
        await changes.aclose()


async def _raw_hops(url: str, count: int) -> list[float]:
    """One NOTIFY from one connection to a LISTEN on another, ``count`` times (ns)."""
    sender, listener = await asyncpg.connect(url), await asyncpg.connect(url)
    samples: list[float] = []
    try:
        heard: asyncio.Queue[int] = asyncio.Queue()
        await listener.add_listener("bench_fanout", lambda *_: heard.put_nowait(time.perf_counter_ns()))
        for _ in range(count):
            start = time.perf_counter_ns()
            await sender.execute("NOTIFY bench_fanout")
            samples.append(await heard.get() - start)
    finally:
        await sender.close()
        await listener.close()
    return samples


async def fan_out(report: Report, url: str, dicts: int, changes: int) -> None:
    """``dicts`` watching dicts on one keyspace, one client; ``changes`` writes by another dict."""
    keyspace = f"fan-{time.monotonic_ns() % 10**6}"
    plain = url.split("?", 1)[0]
    admin = await asyncpg.connect(plain)
    ctx = TortoiseContext()
    tracemalloc.start()
    try:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(ctx.close_connections)
            with ctx:
                await ctx.init(db_url=url, modules={"models": ["aiodurabledict.backends.tortoise_models"]})
                writer = await stack.enter_async_context(
                    ModelDict(DurableEntry, keyspace=keyspace, watch=False)
                )
                # The safety-net polls of so many dicts would be their own load: notices do the work here.
                made = [
                    ModelDict(DurableEntry, keyspace=keyspace, heartbeat=60, poll_interval=60)
                    for _ in range(dicts)
                ]
            before, _ = tracemalloc.get_traced_memory()
            opens = []
            for d in made:
                start = time.perf_counter_ns()
                await stack.enter_async_context(d)
                opens.append(time.perf_counter_ns() - start)
            memory = (tracemalloc.get_traced_memory()[0] - before) / dicts
            tracemalloc.stop()
            for _ in range(500):
                if all(d.live for d in made):
                    break
                await asyncio.sleep(0.01)
            listening = await admin.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
                APPLICATION_NAME,
            )
            samples = []
            for value in range(changes):
                arrivals = [asyncio.create_task(_arrived(d, value)) for d in made]
                await asyncio.sleep(0)
                start = time.perf_counter_ns()
                await writer.set("k", value)
                await asyncio.wait_for(asyncio.gather(*arrivals), 30)
                samples.append(time.perf_counter_ns() - start)
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        await admin.close()
    raw = timing_of((await _raw_hops(plain, changes))[changes // 10 :])
    report.add(
        GROUP,
        f"postgres: one write -> the last of {dicts} dicts in one process",
        timing_of(samples[changes // 10 :]),
        n=dicts,
        baseline="raw NOTIFY -> LISTEN (one hop)",
        baseline_timing=raw,
        note=f"LISTEN connections: {listening} (one per dict before); the write included",
    )
    report.add(
        GROUP,
        f"postgres: open one of {dicts} dicts with a watcher",
        timing_of(opens),
        n=dicts,
        note=f"{memory / 1024:.1f} KiB of Python memory per dict (tracemalloc)",
    )
