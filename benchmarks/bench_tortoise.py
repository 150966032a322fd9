"""ModelDict (Tortoise ORM) on SQLite, PostgreSQL and MySQL against raw queries on the same database, same run.

Rows, per database: ``sync()`` after one remote change vs a full reload (SELECT every row of the dict +
decode, what the original ModelDict does on every change) at several N; ``set()`` vs one raw upsert;
``sync()`` with nothing changed on a marked store vs one memcached get, and vs ``sync()`` without the
marker (one query); propagation from a writer in another process to the cache: PostgreSQL NOTIFY (vs
a raw NOTIFY -> LISTEN) and memcached polling on SQLite and MySQL (vs the poll interval); on
PostgreSQL, many dicts in one process on one client: the LISTEN connections they use, and the time
from a write to the last of them (vs a raw NOTIFY -> LISTEN). The dicts use the ready ``DurableEntry``
table; SQLite lives in a temporary folder, PostgreSQL in a schema of its own, MySQL in a database of
its own, both dropped afterwards.

Also the writer side of the propagation rows: ``python -m benchmarks.bench_tortoise writer ...``.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from aiodurabledict import JSONCodec
from aiodurabledict.backends.tortoise import ModelDict, TortoiseBackend, open_url_dict
from benchmarks._harness import Report, compare_async, timing_of
from benchmarks._tortoise_fanout import fan_out

GROUP = "tortoise"
PG_URL = os.environ.get("AIODURABLEDICT_POSTGRES_URL") or "postgres://postgres@127.0.0.1:5432/test"
MYSQL_URL = os.environ.get("AIODURABLEDICT_MYSQL_URL") or "mysql://root:@127.0.0.1:3306/test"
MEMCACHED = os.environ.get("AIODURABLEDICT_MEMCACHED") or "127.0.0.1:11211"
POLL_INTERVAL = 0.05
# asyncpg ships no type information.
asyncpg: Any = importlib.import_module("asyncpg")

_decode = JSONCodec().decode


def _value(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"item-{i}", "enabled": i % 2 == 0}


def _memcached() -> Any:
    import aiomcache

    host, _, port = MEMCACHED.rpartition(":")
    return aiomcache.Client(host, int(port))


def _backend(d: ModelDict) -> TortoiseBackend:
    return d.backend


@asynccontextmanager
async def _mysql_database() -> AsyncIterator[str | None]:
    """A fresh MySQL database (binary collation), dropped afterwards; ``None`` when MySQL is absent."""
    from urllib.parse import urlsplit

    try:
        asyncmy: Any = importlib.import_module("asyncmy")
    except ImportError as exc:
        print(f"MySQL skipped: {exc}", file=sys.stderr)
        yield None
        return
    parts = urlsplit(MYSQL_URL)
    database = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncmy.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
            connect_timeout=5,
        )
    except (OSError, asyncmy.errors.MySQLError) as exc:
        print(f"MySQL skipped: {exc}", file=sys.stderr)
        yield None
        return
    try:
        async with admin.cursor() as cursor:
            await cursor.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        yield f"mysql://{parts.netloc}/{database}"
    finally:
        async with admin.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        await admin.ensure_closed()


@asynccontextmanager
async def _databases() -> AsyncIterator[list[tuple[str, str]]]:
    """A SQLite file and, when the servers answer, a fresh PostgreSQL schema and MySQL database:
    ``(label, url)`` pairs."""
    async with _mysql_database() as mysql, _sqlite_and_postgres() as found:
        yield found + ([("mysql", mysql)] if mysql else [])


@asynccontextmanager
async def _sqlite_and_postgres() -> AsyncIterator[list[tuple[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="aiodurabledict-bench-") as folder:
        found = [("sqlite", f"sqlite:///{Path(folder) / 'bench.db'}")]
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = None
        try:
            admin = await asyncpg.connect(PG_URL, timeout=5)
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            found.append(("postgres", f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
        try:
            yield found
        finally:
            if admin is not None:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await admin.close()


async def run(report: Report, quick: bool) -> None:
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    async with _databases() as databases:
        for label, url in databases:
            for n in sizes:
                await _at_size(report, label, url, n, 5 if quick else max(9, 1_000_000 // (n * 10)))
            await _unchanged_sync(report, label, url, 20 if quick else 200)
        for label, url in databases:
            if label == "postgres":
                await _notify_propagation(report, url, 50 if quick else 400)
                await fan_out(report, url, 50 if quick else 200, 10 if quick else 40)
            else:
                await _poll_propagation(report, label, url, 30 if quick else 200)


async def _fill(url: str, keyspace: str, n: int) -> None:
    async with open_url_dict(url, keyspace=keyspace, watch=False) as d:
        batch = 10_000
        for start in range(0, n, batch):
            await d.update({f"key{i}": _value(i) for i in range(start, min(n, start + batch))})


async def _at_size(report: Report, label: str, url: str, n: int, repeats: int) -> None:
    keyspace = f"n{n}-{uuid.uuid4().hex[:6]}"
    await _fill(url, keyspace, n)
    async with (
        open_url_dict(url, keyspace=keyspace, watch=False) as reader,
        open_url_dict(url, keyspace=keyspace, watch=False) as writer,
        open_url_dict(url, keyspace=keyspace, watch=False) as raw,
    ):
        # The raw queries go through a connection of their own, as the original's reload would: a
        # reload of every row on the reader's connection would slow the next statement there.
        client: Any = _backend(raw).client()
        p = {"sqlite": "?", "mysql": "%s"}.get(label, "$1")
        q = "`" if label == "mysql" else '"'
        select_all = (
            f"SELECT {q}key{q}, {q}value{q} FROM {q}aiodurabledict_entry{q} WHERE {q}keyspace{q} = {p}"
        )

        async def full_reload() -> dict[str, Any]:
            _, rows = await client.execute_query(select_all, [keyspace])
            # MySQL's client answers dicts, the others sequences.
            pairs = (tuple(row.values()) if isinstance(row, dict) else row for row in rows)
            return {key: _decode(bytes(value)) for key, value in pairs}

        counter = iter(range(10**9))

        async def remote_change() -> None:
            await writer.set(f"key{n // 2}", _value(next(counter)))

        timing, base = await compare_async(reader.sync, full_reload, repeats=repeats, setup=remote_change)
        report.add(
            GROUP,
            f"{label}: sync() after one remote change",
            timing,
            n=n,
            baseline="full reload (SELECT all + decode)",
            baseline_timing=base,
        )
        assert reader[f"key{n // 2}"] == writer[f"key{n // 2}"]
        # Alternating with a full reload leaves garbage and cold caches behind; against one small
        # query instead, the figure shows what a sync costs by itself.
        select_one = f"SELECT {q}value{q} FROM {q}aiodurabledict_entry{q} WHERE {q}keyspace{q} = {p} AND {q}key{q} = 'key1'"
        timing, base = await compare_async(
            reader.sync,
            lambda: client.execute_query(select_one, [keyspace]),
            repeats=100 if repeats > 5 else 20,
            setup=remote_change,
        )
        report.add(
            GROUP,
            f"{label}: sync() after one remote change",
            timing,
            n=n,
            baseline="one SELECT by key",
            baseline_timing=base,
        )

        if label == "mysql":
            upsert = (
                "INSERT INTO `aiodurabledict_entry` (`key`, `value`, `keyspace`) VALUES (%s, %s, %s) "
                "ON DUPLICATE KEY UPDATE `value` = VALUES(`value`)"
            )
        else:
            p2 = "?1, ?2, ?3" if label == "sqlite" else "$1, $2, $3"
            upsert = (
                f'INSERT INTO "aiodurabledict_entry" ("key", "value", "keyspace") VALUES ({p2}) '
                'ON CONFLICT ("keyspace", "key") DO UPDATE SET "value" = excluded."value"'
            )
        timing, base = await compare_async(
            lambda: writer.set(f"key{next(counter) % n}", _value(0)),
            lambda: client.execute_query(upsert, ["raw", b"{}", keyspace]),
            repeats=100 if repeats > 5 else 20,
        )
        report.add(
            GROUP, f"{label}: set() (write)", timing, n=n, baseline="one raw upsert", baseline_timing=base
        )


async def _unchanged_sync(report: Report, label: str, url: str, repeats: int) -> None:
    """``sync()`` when nothing changed: on a marked store one memcached read (no query), compared with
    one memcached get by hand, and with ``sync()`` without the marker (one query)."""
    keyspace = f"sync-{uuid.uuid4().hex[:6]}"
    mc = _memcached()
    try:
        async with (
            open_url_dict(url, keyspace=keyspace, watch=False, cache=mc, confirm_interval=3600) as marked,
            open_url_dict(url, keyspace=keyspace, watch=False) as plain,
        ):
            await marked.set("k", 1)
            await plain.sync()
            await marked.sync()
            marker = _backend(marked).marker
            assert marker is not None
            key = marker.key
            timing, base = await compare_async(marked.sync, lambda: mc.get(key), repeats=repeats, inner=20)
            report.add(
                GROUP,
                f"{label}: sync(), nothing changed, memcached marker",
                timing,
                baseline="one memcached get (aiomcache)",
                baseline_timing=base,
                note="0 database queries; goal <= 1.2x",
            )
            timing, base = await compare_async(marked.sync, plain.sync, repeats=repeats, inner=20)
            report.add(
                GROUP,
                f"{label}: sync(), nothing changed, memcached marker",
                timing,
                baseline="sync() without the marker (one query)",
                baseline_timing=base,
                note="0 database queries vs 1",
            )
    finally:
        await mc.close()


# -- propagation across processes ------------------------------------------------------------------
# time.monotonic_ns() reads CLOCK_MONOTONIC, which is system-wide on Linux: stamps taken in the
# writer process compare with the reader's clock.


async def _collect(d: ModelDict, count: int, into: list[int]) -> None:
    async for change in d.changes():
        new: Any = change.new
        if isinstance(new, dict) and "t" in new:
            into.append(time.monotonic_ns() - new["t"])
            if len(into) == count:
                return


async def _wait_connected(d: ModelDict) -> None:
    for _ in range(500):
        if d.status.connected:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the watcher did not connect")


async def _writer_process(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_tortoise", "writer", *args
    )


async def _notify_propagation(report: Report, url: str, count: int) -> None:
    """A writer process alternates a raw NOTIFY and a dict write; this process times both arrivals."""
    gc.collect()
    keyspace = f"prop-{uuid.uuid4().hex[:6]}"
    raw: list[int] = []
    cached: list[int] = []
    listener = await asyncpg.connect(PG_URL)
    try:
        done = asyncio.Event()

        def on_raw(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            raw.append(time.monotonic_ns() - int(payload))
            if len(raw) == count:
                done.set()

        await listener.add_listener("bench_raw", on_raw)
        async with open_url_dict(url, keyspace=keyspace, heartbeat=30) as d:
            await _wait_connected(d)
            collect = asyncio.create_task(_collect(d, count, cached))
            writer = await _writer_process("notify", url, keyspace, str(count))
            try:
                async with asyncio.timeout(120):
                    await asyncio.gather(collect, done.wait())
            finally:
                await writer.wait()
    finally:
        await listener.close()
    dict_timing, raw_timing = timing_of(cached[count // 10 :]), timing_of(raw[count // 10 :])
    report.add(
        GROUP,
        "postgres: propagation p50 (writer process -> cache, NOTIFY)",
        dict_timing,
        baseline="raw NOTIFY -> LISTEN",
        baseline_timing=raw_timing,
        note=f"p99 {dict_timing.p99 / 1e6:.2f} ms vs raw p99 {raw_timing.p99 / 1e6:.2f} ms",
        keep_samples=True,
    )


async def _poll_propagation(report: Report, label: str, url: str, count: int) -> None:
    """A writer process writes now and then; the reader polls the memcached marker every POLL_INTERVAL."""
    gc.collect()
    keyspace = f"poll-{uuid.uuid4().hex[:6]}"
    cached: list[int] = []
    mc = _memcached()
    try:
        async with open_url_dict(url, keyspace=keyspace, cache=mc, poll_interval=POLL_INTERVAL) as d:
            await _wait_connected(d)
            collect = asyncio.create_task(_collect(d, count, cached))
            writer = await _writer_process("poll", url, keyspace, str(count))
            try:
                async with asyncio.timeout(120):
                    await writer.wait()
                # Writes that land within one poll arrive as one change: take what arrived.
                await asyncio.sleep(POLL_INTERVAL * 3)
            finally:
                collect.cancel()
                await asyncio.gather(collect, return_exceptions=True)
    finally:
        await mc.close()
    timing = timing_of(cached[count // 10 :])
    report.add(
        GROUP,
        f"{label}: propagation p50 (writer process -> cache, memcached poll)",
        timing,
        baseline="poll_interval",
        baseline_timing=POLL_INTERVAL * 1e9,
        note=f"p99 {timing.p99 / 1e6:.1f} ms; bound: poll_interval + one query",
        # The polled stores' curve belongs on the propagation chart beside the pushing ones.
        keep_samples=True,
    )


async def _writer(mode: str, url: str, keyspace: str, count: int) -> None:
    """Write the current time ``count`` times (after a raw NOTIFY of it, in ``notify`` mode)."""
    async with AsyncExitStack() as stack:
        listener = None
        cache = None
        if mode == "notify":
            listener = await asyncpg.connect(PG_URL)
            stack.push_async_callback(listener.close)
        else:
            cache = _memcached()
            stack.push_async_callback(cache.close)
        d = await stack.enter_async_context(open_url_dict(url, keyspace=keyspace, watch=False, cache=cache))
        await asyncio.sleep(0.3)  # the reader is listening before the first write
        for i in range(count):
            if listener is not None:
                await listener.execute("SELECT pg_notify('bench_raw', $1)", str(time.monotonic_ns()))
                await asyncio.sleep(0.001)
            await d.set("t", {"t": time.monotonic_ns(), "i": i})
            # Polling: writes land at random points of the reader's poll cycle.
            await asyncio.sleep(
                0.001 if listener is not None else POLL_INTERVAL * (0.5 + (i * 7919 % 100) / 100)
            )


if __name__ == "__main__" and sys.argv[1:2] == ["writer"]:
    asyncio.run(_writer(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
