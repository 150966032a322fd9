"""RedisDict against raw redis-py on the same server, in the same run.

Rows: autosync ``get()`` with a live watcher vs one GET; failovers (see ``redis_failover``); ``sync()`` unchanged (round trips counted);
``sync()`` after one remote change vs a full reload (HGETALL + decode) at several N; a write at those
N vs one HSET; ``open()`` vs HGETALL + decode; propagation from a writer in another process to the
cache vs raw PUBLISH -> subscriber. Uses keyspaces ``bench:<random>`` and deletes them afterwards.

Also the writer side of the propagation rows: ``python -m benchmarks.bench_redis writer ...``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Connection, Redis

from aiodurabledict import JSONCodec
from aiodurabledict.backends.redis import RedisDict
from benchmarks._harness import Report, compare_async, timing_of
from benchmarks.redis_failover import run_failover

GROUP = "redis"
URL = os.environ.get("AIODURABLEDICT_REDIS_URL") or "redis://127.0.0.1:6379/0"


class CountingConnection(Connection):
    """Counts packed sends: one send is one round trip."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


def _value(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"item-{i}", "enabled": i % 2 == 0}


@asynccontextmanager
async def _keyspace(client: Redis) -> AsyncIterator[str]:
    keyspace = f"bench:{uuid.uuid4().hex[:12]}"
    try:
        yield keyspace
    finally:
        await client.delete(
            *(f"{{{keyspace}}}:{part}" for part in ("data", "version", "log", "horizon", "token", "tokens"))
        )


async def _fill(client: Redis, keyspace: str, n: int) -> None:
    """N entries written through the library, in batches (one script call each)."""
    async with RedisDict[Any](keyspace, client, watch=False) as d:
        batch = 10_000
        for start in range(0, n, batch):
            await d.update({f"key{i}": _value(i) for i in range(start, min(n, start + batch))})


_decode = JSONCodec().decode


async def _raw_reload(client: Redis, keyspace: str) -> dict[str, Any]:
    """What the original does on every change: HGETALL and decode every value (with the same codec)."""
    raw: dict[bytes, bytes] = await client.hgetall(f"{{{keyspace}}}:data")  # type: ignore[assignment]
    return {k.decode(): _decode(v) for k, v in raw.items()}


async def run(report: Report, quick: bool) -> None:
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    client = Redis.from_url(URL)
    counted = Redis.from_url(URL, connection_class=CountingConnection)
    try:
        await client.ping()
        await _reads(report, client, counted, 20 if quick else 200)
        for n in sizes:
            await _at_size(report, client, n, 5 if quick else max(7, 2_000_000 // (n * 10)))
        await _open(report, client, sizes[-1], 3 if quick else 9)
        await _propagation(report, client, 60 if quick else 400)
        await run_failover(report, GROUP, quick)
    finally:
        await client.aclose()
        await counted.aclose()


async def _wait_connected(d: RedisDict[Any]) -> None:
    for _ in range(500):
        if d.status.connected:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the watcher did not connect")


async def _reads(report: Report, client: Redis, counted: Redis, repeats: int) -> None:
    async with _keyspace(client) as keyspace:
        plain = f"{{{keyspace}}}:plain"
        await client.set(plain, b"1")

        def get() -> Awaitable[Any]:
            return client.get(plain)

        async with (
            RedisDict[Any](keyspace, counted, heartbeat=60) as live,
            RedisDict[Any](keyspace, client, watch=False) as unwatched,
        ):
            await live.set("k", _value(1))
            await unwatched.sync()
            await _wait_connected(live)
            timing, base = await compare_async(lambda: live.get("k"), get, repeats=repeats, inner=20)
            report.add(
                GROUP, "autosync get(), live watcher", timing, baseline="redis GET", baseline_timing=base
            )

            before = CountingConnection.sent
            timing, base = await compare_async(live.sync, get, repeats=repeats, inner=20)
            trips = (CountingConnection.sent - before) / ((repeats + 3) * 20)
            report.add(
                GROUP,
                "sync() unchanged, live watcher",
                timing,
                baseline="redis GET",
                baseline_timing=base,
                note=f"{trips:g} round trips per call",
            )

            async with RedisDict[Any](keyspace, counted, watch=False) as unwatched_counted:
                before = CountingConnection.sent
                timing, base = await compare_async(unwatched_counted.sync, get, repeats=repeats)
                trips = (CountingConnection.sent - before) / (repeats + 3)
            report.add(
                GROUP,
                "sync() unchanged, no watcher",
                timing,
                baseline="redis GET",
                baseline_timing=base,
                note=f"{trips:g} round trips per call",
            )
            timing, base = await compare_async(lambda: unwatched.get("k"), get, repeats=repeats)
            report.add(
                GROUP, "autosync get(), no watcher", timing, baseline="redis GET", baseline_timing=base
            )
        await client.delete(plain)


async def _at_size(report: Report, client: Redis, n: int, repeats: int) -> None:
    async with _keyspace(client) as keyspace:
        await _fill(client, keyspace, n)
        plain = f"{{{keyspace}}}:plain"
        async with (
            RedisDict[Any](keyspace, client, watch=False) as reader,
            RedisDict[Any](keyspace, client, watch=False) as writer,
        ):
            counter = iter(range(10**9))

            async def remote_change() -> None:
                await writer.set(f"key{n // 2}", _value(next(counter)))

            timing, base = await compare_async(
                reader.sync, lambda: _raw_reload(client, keyspace), repeats=repeats, setup=remote_change
            )
            report.add(
                GROUP,
                "sync() after one remote change",
                timing,
                n=n,
                baseline="full reload (HGETALL + decode)",
                baseline_timing=base,
            )
            assert reader[f"key{n // 2}"] == writer[f"key{n // 2}"]
            timing, base = await compare_async(
                reader.sync,
                lambda: client.get(plain),
                repeats=200 if repeats > 5 else 20,
                setup=remote_change,
            )
            report.add(
                GROUP,
                "sync() after one remote change",
                timing,
                n=n,
                baseline="redis GET",
                baseline_timing=base,
            )

            timing, base = await compare_async(
                lambda: writer.set(f"key{next(counter) % n}", _value(0)),
                lambda: client.hset(plain, "k", b"v"),
                repeats=200 if repeats > 5 else 20,
            )
            report.add(GROUP, "set() (write)", timing, n=n, baseline="redis HSET", baseline_timing=base)
        await client.delete(plain)


async def _open(report: Report, client: Redis, n: int, repeats: int) -> None:
    async with _keyspace(client) as keyspace:
        await _fill(client, keyspace, n)

        async def open_close() -> None:
            async with RedisDict[Any](keyspace, client, watch=False) as d:
                assert len(d) == n

        timing, base = await compare_async(open_close, lambda: _raw_reload(client, keyspace), repeats=repeats)
        report.add(
            GROUP, "open() (load + decode)", timing, n=n, baseline="HGETALL + decode", baseline_timing=base
        )


# -- propagation across processes ------------------------------------------------------------------
# time.monotonic_ns() reads CLOCK_MONOTONIC, which is system-wide on Linux: stamps taken in the
# writer process compare with the reader's clock.


async def _propagation(report: Report, client: Redis, count: int) -> None:
    """One writer process alternates a raw PUBLISH and a dict write; this process times both arrivals.

    Alternating puts both on the same machine load; the first tenth of each warms the path up.
    """
    gc.collect()
    raw: list[int] = []
    cached: list[int] = []
    async with (
        _keyspace(client) as keyspace,
        client.pubsub() as pubsub,
        RedisDict[Any](keyspace, client) as d,
    ):
        await pubsub.subscribe(f"{{{keyspace}}}:raw")
        await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        await _wait_connected(d)
        stream = d.changes()

        async def raw_side() -> None:
            while len(raw) < count:
                message = await pubsub.get_message(timeout=5.0)
                if message is not None and message["type"] == "message":
                    raw.append(time.monotonic_ns() - int(message["data"]))

        async def dict_side() -> None:
            async for change in stream:
                new: Any = change.new
                cached.append(time.monotonic_ns() - new["t"])
                if len(cached) == count:
                    break

        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.bench_redis", "writer", keyspace, str(count), URL
        )
        try:
            async with asyncio.timeout(120):
                await asyncio.gather(raw_side(), dict_side())
        finally:
            await writer.wait()
    raw_timing = timing_of(raw[count // 10 :])
    timing = timing_of(cached[count // 10 :])
    report.add(
        GROUP,
        "propagation p50 (writer process -> changes() consumer)",
        timing,
        baseline="raw PUBLISH -> subscriber",
        baseline_timing=raw_timing,
        note=f"p99 {timing.p99 / 1000:.0f} µs vs raw p99 {raw_timing.p99 / 1000:.0f} µs",
        keep_samples=True,
    )


async def _writer(keyspace: str, count: int, url: str) -> None:
    """Alternate a raw PUBLISH and a dict write of the current time, each onto an idle reader."""
    client = Redis.from_url(url)
    channel = f"{{{keyspace}}}:raw"
    try:
        async with RedisDict[Any](keyspace, client, watch=False) as d:
            await asyncio.sleep(0.3)  # the reader is listening before the first write
            for i in range(count):
                await client.publish(channel, str(time.monotonic_ns()))
                await asyncio.sleep(0.001)
                await d.set("t", {"t": time.monotonic_ns(), "i": i})
                await asyncio.sleep(0.001)
    finally:
        await client.aclose()


if __name__ == "__main__" and sys.argv[1:2] == ["writer"]:
    asyncio.run(_writer(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
