"""1,000 RedisDicts in one process on one client: connections used, open time, memory, and the
fan-out of one change to all of them, against raw redis-py in the same run.

Every dict follows the same keyspace (the worst case for fan-out: one notice, 1,000 caches). The
baselines: one GET for open; one raw PUBLISH to one subscriber for fan-out.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
import uuid
from contextlib import AsyncExitStack
from typing import Any

from redis.asyncio import Redis

from aiodurabledict.backends.redis import RedisDict
from benchmarks._harness import Report, compare_async, timing_of

GROUP = "redis (1,000 dicts)"
URL = os.environ.get("AIODURABLEDICT_REDIS_URL") or "redis://127.0.0.1:6379/0"
_PARTS = ("data", "version", "log", "horizon", "token", "tokens", "plain")


async def _connections(admin: Redis, name: str) -> tuple[int, int]:
    """(pub/sub, other) connections named ``name`` (CLIENT LIST)."""
    pubsub = other = 0
    for entry in await admin.client_list():
        if entry.get("name") == name:
            if int(entry.get("sub", 0)):
                pubsub += 1
            else:
                other += 1
    return pubsub, other


async def run(report: Report, quick: bool) -> None:
    count = 200 if quick else 1000
    name = f"bench-many-{uuid.uuid4().hex[:8]}"
    keyspace = f"bench:{uuid.uuid4().hex[:12]}"
    admin = Redis.from_url(URL)
    client = Redis.from_url(URL, client_name=name)
    plain = f"{{{keyspace}}}:plain"
    try:
        await admin.set(plain, b"1")
        async with RedisDict[Any](keyspace, admin, watch=False) as seed:
            await seed.update({f"k{i}": i for i in range(10)})
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        opens: list[float] = []
        async with AsyncExitStack() as stack:
            dicts: list[RedisDict[Any]] = []
            for _ in range(count):
                started = time.perf_counter_ns()
                dicts.append(await stack.enter_async_context(RedisDict[Any](keyspace, client, heartbeat=30)))
                opens.append(time.perf_counter_ns() - started)
            for _ in range(1000):
                if all(d.live for d in dicts):
                    break
                await asyncio.sleep(0.01)
            gc.collect()
            memory = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            pubsub, other = await _connections(admin, name)
            _, get = await compare_async(
                lambda: asyncio.sleep(0), lambda: admin.get(plain), repeats=50 if quick else 300
            )
            report.add(
                GROUP,
                f"open() of each of {count:,} dicts on one client",
                timing_of(opens),
                n=count,
                baseline="redis GET",
                baseline_timing=get,
                note=(
                    f"connections: {pubsub} pub/sub (was {count:,}: one per dict) + {other} for commands; "
                    f"memory {memory / count / 1024:.1f} KiB per dict"
                ),
            )
            await _fan_out(report, admin, keyspace, dicts, 5 if quick else 20)
    finally:
        await admin.delete(*(f"{{{keyspace}}}:{p}" for p in _PARTS))
        await client.aclose()
        await admin.aclose()


async def _arrival(stream: Any, started: int, delays: list[float]) -> None:
    async for change in stream:
        if change.key == "fan":
            delays.append(time.perf_counter_ns() - started)
            return


async def _fan_out(
    report: Report, admin: Redis, keyspace: str, dicts: list[RedisDict[Any]], rounds: int
) -> None:
    """Write once; time until each dict's cache shows it. Samples: every dict of every round."""
    delays: list[float] = []
    raw: list[float] = []
    streams = [d.changes() for d in dicts]
    async with RedisDict[Any](keyspace, admin, watch=False) as writer, admin.pubsub() as pubsub:
        channel = f"{{{keyspace}}}:raw"
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=1.0)
        for i in range(rounds):
            started = time.perf_counter_ns()
            await admin.publish(channel, b"x")
            while (await pubsub.get_message(timeout=5.0)) is None:
                pass
            raw.append(time.perf_counter_ns() - started)
            started = time.perf_counter_ns()
            await writer.set("fan", i)

            async with asyncio.timeout(30):
                await asyncio.gather(*(_arrival(s, started, delays) for s in streams))
    timing = timing_of(delays)
    report.add(
        GROUP,
        f"fan-out of one change to {len(dicts):,} dicts (write -> each cache)",
        timing,
        n=len(dicts),
        baseline="raw PUBLISH -> one subscriber",
        baseline_timing=timing_of(raw),
        note=f"p99 {timing.p99 / 1e6:.1f} ms over {rounds} changes x {len(dicts):,} dicts",
    )
