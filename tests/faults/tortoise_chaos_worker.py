"""A process of the Tortoise chaos test: a writer or a watcher on one PostgreSQL dict.

    python -m tests.faults.tortoise_chaos_worker writer|watcher DB_URL MEMCACHED SEED N

Both print ``ready`` once their dicts are open. A writer then writes until a line arrives on stdin,
and prints what it knows of its writes as one JSON line: for each of its own keys the last value
acknowledged and the values of later writes that failed (they may have committed nonetheless), and
the increments of the shared counter acknowledged and unknown. A watcher syncs its manual dict again and
again until one JSON line arrives, the table's content, and prints whether its watching dict, and its
manual dict after one more ``sync()``, became equal to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from typing import Any

from tortoise.context import TortoiseContext

from aiodurabledict import MISSING, AsyncDurableDict, BackendError
from aiodurabledict.backends.tortoise import ModelDict
from aiodurabledict.backends.tortoise_models import DurableEntry

KEYSPACE = "chaos"
OWN_KEYS = 8
COUNTER = "counter"
#: Seconds a watcher waits for its dicts to equal the table.
CONVERGE = 30.0


async def _stdin_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def _open(d: AsyncDurableDict[Any]) -> None:
    """Open, retrying while the server is away."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await d.open()
            return
        except BackendError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


class Ledger:
    """What one writer knows of its writes."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.acked = 0
        self.increments = 0
        self.unknown_increments = 0

    def done(self, key: str, value: Any) -> None:
        self.keys[key] = {"last": value, "unknown": []}

    def unsure(self, key: str, value: Any) -> None:
        self.keys.setdefault(key, {"last": None, "unknown": []})["unknown"].append(value)


async def writer(d: AsyncDurableDict[Any], n: int, rng: random.Random, stop: asyncio.Event) -> Ledger:
    ledger = Ledger()
    i = 0
    while not stop.is_set():
        i += 1
        key = f"w{n}/{rng.randrange(OWN_KEYS)}"
        value = f"{n}:{i}"
        op = rng.random()
        try:
            if op < 0.45:
                await d.set(key, value)
                ledger.done(key, value)
            elif op < 0.55:
                await d.pop(key, None)
                ledger.done(key, None)
            elif op < 0.65:
                other = f"w{n}/{rng.randrange(OWN_KEYS)}"
                await d.update({key: value, other: value})
                ledger.done(key, value)
                ledger.done(other, value)
            elif op < 0.8:
                expected = d.view.get(key, MISSING)
                if await d.compare_and_set(key, expected, value):
                    ledger.done(key, value)
                else:
                    # Not swapped: the dict now shows the store's value.
                    ledger.done(key, d.view.get(key))
            else:
                current = d.view.get(COUNTER)
                if await d.compare_and_set(
                    COUNTER, MISSING if current is None else current, (current or 0) + 1
                ):
                    ledger.increments += 1
            ledger.acked += 1
        except BackendError:
            if op < 0.45:
                ledger.unsure(key, value)
            elif op < 0.55:
                ledger.unsure(key, None)
            elif op < 0.65:
                ledger.unsure(key, value)
                ledger.unsure(other, value)
            elif op < 0.8:
                ledger.unsure(key, value)
            else:
                ledger.unknown_increments += 1
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(0, 0.01))
    return ledger


async def _keep_syncing(d: AsyncDurableDict[Any]) -> None:
    """sync() again and again, as request handlers would: the marker is trusted whenever it names the
    commit this dict last learnt of, so a writer that failed to mark a commit would show here."""
    while True:
        try:
            await d.sync()
        except BackendError:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.02)


async def main(role: str, url: str, memcached: str, seed: int, n: int) -> None:
    import aiomcache

    # asyncpg's pool says each time it cannot reconnect to a killed server: the test expects that.
    logging.getLogger("asyncpg.pool").setLevel(logging.CRITICAL)
    host, _, port = memcached.rpartition(":")
    cache = aiomcache.Client(host, int(port))
    ctx = TortoiseContext()
    with ctx:
        await ctx.init(db_url=url, modules={"models": ["aiodurabledict.backends.tortoise_models"]})
        opts: dict[str, Any] = {"keyspace": KEYSPACE, "cache": cache, "timeout": 2.0, "heartbeat": 0.5}
        if role == "writer":
            dicts = [ModelDict(DurableEntry, watch=False, **opts)]
        else:
            dicts = [ModelDict(DurableEntry, **opts), ModelDict(DurableEntry, watch=False, **opts)]
    try:
        for d in dicts:
            await _open(d)
        print("ready", flush=True)
        if role == "writer":
            stop = asyncio.Event()
            task = asyncio.create_task(writer(dicts[0], n, random.Random(seed * 1000 + n), stop))
            await _stdin_line()
            stop.set()
            ledger = await task
            report = {
                "acked": ledger.acked,
                "keys": ledger.keys,
                "increments": ledger.increments,
                "unknown_increments": ledger.unknown_increments,
            }
        else:
            watching, manual = dicts
            syncing = asyncio.create_task(_keep_syncing(manual))
            expected = json.loads(await _stdin_line())
            syncing.cancel()
            await asyncio.gather(syncing, return_exceptions=True)
            deadline = time.monotonic() + CONVERGE
            while dict(watching.view) != expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            synced = False
            while not synced and time.monotonic() < deadline:
                try:
                    await manual.sync()
                    synced = True
                except BackendError:
                    await asyncio.sleep(0.2)
            report = {
                "watching": dict(watching.view) == expected,
                "manual": dict(manual.view) == expected,
                "status": str(watching.status.error),
            }
        print(json.dumps(report), flush=True)
    finally:
        for d in dicts:
            await d.aclose()
        await ctx.close_connections()
        await cache.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
