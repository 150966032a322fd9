"""Chaos on PostgreSQL: writer and watcher processes on one dict while a private server is killed -9,
frozen and restarted and memcached is flushed, in an order drawn from a seed. At the end every dict
(watching, and manual after ``sync()``) is compared with the table read directly, and every write a
writer saw acknowledged must be in the table unless a later write of its own superseded it.

Prints the seed, the faults, the writes acknowledged, the writes lost and the dicts diverged (both 0).
About a minute; ``AIODURABLEDICT_CHAOS_SECONDS`` sets the chaos phase (default 25),
``AIODURABLEDICT_CHAOS_SEED`` the seed (default: drawn, and printed).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.servers import MemcachedServer, PostgresServer, ServerError, unavailable

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.postgres, pytest.mark.memcached]

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 3
WATCHERS = 3

# asyncpg ships no type information.
asyncpg: Any = importlib.import_module("asyncpg")


class Worker:
    """One worker process, spoken to line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, role: str) -> None:
        self.proc = proc
        self.role = role

    async def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.proc.stdout.readline()
        if not raw:
            raise AssertionError(f"the {self.role} process ended (exit status {await self.proc.wait()})")
        return raw.decode().strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")


@asynccontextmanager
async def workers(url: str, memcached: str, seed: int) -> AsyncIterator[list[Worker]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started: list[Worker] = []
    try:
        for n in range(WRITERS + WATCHERS):
            role = "writer" if n < WRITERS else "watcher"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.faults.tortoise_chaos_worker",
                role,
                url,
                memcached,
                str(seed),
                str(n),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            started.append(Worker(proc, role))
        yield started
    finally:
        for worker in started:
            if worker.proc.returncode is None:
                worker.proc.kill()
            await worker.proc.wait()


async def chaos(server: PostgresServer, memcached: Any, rng: random.Random, seconds: float) -> list[str]:
    """Faults, one after another, for ``seconds``; the server answers again when this returns."""
    done: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        fault = rng.choice(["kill", "freeze", "restart", "flush", "flush"])
        if fault == "kill":
            await server.arestart(graceful=False)
        elif fault == "freeze":
            server.freeze()
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            server.thaw()
        elif fault == "restart":
            await server.arestart()
        else:
            await memcached.flush_all()
        done.append(fault)
    return done


async def table(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            'SELECT "key", "value" FROM "aiodurabledict_entry" WHERE "keyspace" = \'chaos\''
        )
    finally:
        await conn.close()
    return {row["key"]: json.loads(bytes(row["value"])) for row in rows}


def lost_writes(reports: list[dict[str, Any]], content: dict[str, Any]) -> int:
    """Acknowledged writes the table does not hold (a later write of the same writer excepted)."""
    lost = 0
    for report in reports:
        for key, known in report["keys"].items():
            if content.get(key) not in (known["last"], *known["unknown"]):
                lost += 1
    acked = sum(report["increments"] for report in reports)
    unsure = sum(report["unknown_increments"] for report in reports)
    counter = content.get("counter", 0)
    if not acked <= counter <= acked + unsure:
        lost += abs(counter - acked)
    return lost


async def test_chaos_on_postgres() -> None:
    """Writers and watchers in processes of their own through kill -9, freezes, restarts and flushes:
    no acknowledged write lost, no dict diverged from the table."""
    seconds = float(os.environ.get("AIODURABLEDICT_CHAOS_SECONDS") or 25)
    seed = int(os.environ.get("AIODURABLEDICT_CHAOS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    import aiomcache

    try:
        pg, mc = PostgresServer(), MemcachedServer()
    except ServerError as exc:
        unavailable(str(exc))
    async with AsyncExitStack() as stack:
        stack.enter_context(pg)
        stack.enter_context(mc)
        await pg.astart()
        await mc.astart()
        flusher = aiomcache.Client("127.0.0.1", mc.port)
        stack.push_async_callback(flusher.close)
        processes = await stack.enter_async_context(workers(pg.url, mc.address, seed))
        for worker in processes:
            assert await worker.line(60) == "ready"

        faults = await chaos(pg, flusher, rng, seconds)

        writers = [w for w in processes if w.role == "writer"]
        for worker in writers:
            worker.send("stop")
        reports = [json.loads(await worker.line(60)) for worker in writers]
        content = await table(pg.url)
        watchers = [w for w in processes if w.role == "watcher"]
        for worker in watchers:
            worker.send(json.dumps(content))
        verdicts = [json.loads(await worker.line(60)) for worker in watchers]

    acked = sum(report["acked"] for report in reports)
    lost = lost_writes(reports, content)
    diverged = sum(not v["watching"] for v in verdicts) + sum(not v["manual"] for v in verdicts)
    print(
        f"\nchaos on PostgreSQL: seed {seed}, {seconds:g} s, faults {', '.join(faults) or 'none'}; "
        f"writes acknowledged {acked}, lost {lost}, dicts diverged {diverged} "
        f"(of {2 * len(verdicts)}); keys in the table {len(content)}"
    )
    assert acked > 0
    assert lost == 0
    assert diverged == 0, verdicts
