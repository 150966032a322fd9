"""The blocking dict (``aiodurabledict.blocking``) against its baselines, in the same run.

Reads: ``d[k]`` with a live push watcher (memory and Redis), ``d.get(k)``, ``d.view[k]`` and a view
held once, each against a plain dict lookup. Two reference rows say where a read's time goes: a
class whose ``__getitem__`` only looks the key up (the floor of any Python-level mapping method) and
the async dict's own ``d[k]``. Writes: ``d[k] = v`` against ``await d.set(k, v)`` of the async dict
on the same store (memory, Redis, an SQLite file), in alternating batches so that a busy machine's
drift hits both sides alike, and the hop alone (``blocking.run`` of an empty coroutine).

Blocking calls refuse inside a running event loop, so the blocking side runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiodurabledict import AsyncDurableDict, blocking, open_dict
from aiodurabledict.blocking import BlockingDict
from benchmarks._harness import Report, Timing

GROUP = "blocking"
REDIS_URL = os.environ.get("AIODURABLEDICT_REDIS_URL") or "redis://127.0.0.1:6379/0"
N = 10_000


class Floor:
    """The least any Python-level mapping can do on a read: one method call, one lookup."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]


def _with_keyspace(url: str, keyspace: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}keyspace={keyspace}"


def _wait_live(d: BlockingDict[Any]) -> None:
    blocking.run(d.async_dict.wait_live, 10)
    deadline = time.monotonic() + 10
    while not d.live:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{d!r} did not go live")
        time.sleep(0.01)


def _interleaved(stmts: list[str], namespace: dict[str, Any], *, repeats: int, inner: int) -> list[Timing]:
    """Time each statement like ``measure_stmt``, one sample of each in turn, so that a busy
    machine's drift hits them all alike."""
    timers = [timeit.Timer(stmt, timer=time.perf_counter, globals=namespace) for stmt in stmts]
    for timer in timers:
        timer.timeit(inner)
    samples: list[list[float]] = [[] for _ in stmts]
    for _ in range(repeats):
        for timer, into in zip(timers, samples, strict=True):
            into.append(timer.timeit(inner) * 1e9 / inner)
    return [Timing(tuple(s)) for s in samples]


def _reads(report: Report, label: str, url: str, quick: bool) -> None:
    """Reads of a live blocking dict against a plain dict, all in this (non-loop) thread."""
    repeats, inner = (10, 20_000) if quick else (60, 100_000)
    content = {f"key{i}": {"i": i} for i in range(N)}
    d = blocking.open_dict(url)
    try:
        d.update(content)
        _wait_live(d)
        plain = dict(content)
        namespace = {
            "d": d,
            "view": d.view,
            "plain": plain,
            "floor": Floor(plain),
            "inner": d.async_dict,
            "key": f"key{N // 2}",
        }
        rows = [
            ("d[key], live push watcher", "d[key]", "plain[key]"),
            ("d.get(key), live push watcher", "d.get(key)", "plain.get(key)"),
            ("d.view[key]", "d.view[key]", "plain[key]"),
            ("view[key], view held", "view[key]", "plain[key]"),
        ]
        if label == "memory":
            rows += [
                ("reference: a bare Python __getitem__", "floor[key]", "plain[key]"),
                ("reference: the async dict's d[key]", "inner[key]", "plain[key]"),
                ("reference: the live test alone (async d.live)", "inner.live", "plain[key]"),
            ]
        stmts = sorted({stmt for _, a, b in rows for stmt in (a, b)})
        timings = dict(zip(stmts, _interleaved(stmts, namespace, repeats=repeats, inner=inner), strict=True))
        assert d.live, "the watcher went away during the measurement"
        for name, stmt, baseline in rows:
            report.add(
                GROUP,
                f"{label}: {name}",
                timings[stmt],
                n=N,
                baseline=baseline.replace("plain", "plain dict"),
                baseline_timing=timings[baseline],
            )
    finally:
        _drop_or_close(d, label != "memory")


async def _writes(report: Report, label: str, make_url: Callable[[str], str], quick: bool) -> None:
    """``d[k] = v`` of a blocking dict against ``await d.set(k, v)`` of an async dict, same store."""
    repeats, inner = (5, 20) if quick else (30, 100)
    if label == "memory":
        inner *= 5
    blocking_url, async_url = make_url("blocking"), make_url("async")
    d = await asyncio.to_thread(blocking.open_dict, blocking_url)
    try:
        async with open_dict(async_url) as a:
            await asyncio.to_thread(blocking.run, d.async_dict.wait_live, 10)
            counter = [0]

            def blocking_batch() -> float:
                start = time.perf_counter_ns()
                for _ in range(inner):
                    counter[0] += 1
                    d["k"] = counter[0]
                return (time.perf_counter_ns() - start) / inner

            async def async_batch(a: AsyncDurableDict[Any]) -> float:
                start = time.perf_counter_ns()
                for _ in range(inner):
                    counter[0] += 1
                    await a.set("k", counter[0])
                return (time.perf_counter_ns() - start) / inner

            sides: tuple[list[float], list[float]] = ([], [])
            for round_ in range(3 + repeats):
                took = (await asyncio.to_thread(blocking_batch), await async_batch(a))
                if round_ >= 3:
                    sides[0].append(took[0])
                    sides[1].append(took[1])
            report.add(
                GROUP,
                f"{label}: d[k] = v (write)",
                Timing(tuple(sides[0])),
                baseline="async await d.set(k, v)",
                baseline_timing=Timing(tuple(sides[1])),
            )
            if label != "memory":
                await a.drop()
    finally:
        await asyncio.to_thread(_drop_or_close, d, label != "memory")


def _drop_or_close(d: BlockingDict[Any], drop: bool) -> None:
    """Remove a benchmark's dict from a shared store; a memory one only closes."""
    if drop:
        d.drop()
    else:
        d.close()


def _hop(report: Report, quick: bool) -> None:
    """What every blocking write and sync adds: a round trip to the shared loop's thread and back."""

    async def nothing() -> None:
        return None

    repeats, inner = (5, 200) if quick else (30, 2_000)
    samples = []
    for round_ in range(3 + repeats):
        start = time.perf_counter_ns()
        for _ in range(inner):
            blocking.run(nothing)
        if round_ >= 3:
            samples.append((time.perf_counter_ns() - start) / inner)
    report.add(GROUP, "the hop: blocking.run(empty coroutine)", Timing(tuple(samples)))


async def _redis_answers() -> bool:
    try:
        from redis.asyncio import Redis
    except ImportError:
        return False
    client = Redis.from_url(REDIS_URL)
    try:
        async with asyncio.timeout(3):
            await client.ping()
    except Exception:  # noqa: BLE001 - any failure means: no Redis rows
        return False
    finally:
        await client.aclose()
    return True


async def run(report: Report, quick: bool) -> None:
    tag = uuid.uuid4().hex[:12]
    await asyncio.to_thread(_reads, report, "memory", f"memory://bench-reads-{tag}", quick)
    redis = await _redis_answers()
    if redis:
        url = _with_keyspace(REDIS_URL, f"bench:blocking-reads:{tag}")
        await asyncio.to_thread(_reads, report, "redis", url, quick)
    await asyncio.to_thread(_hop, report, quick)
    await _writes(report, "memory", lambda side: f"memory://bench-{side}-{tag}", quick)
    if redis:
        await _writes(report, "redis", lambda side: _with_keyspace(REDIS_URL, f"bench:{side}:{tag}"), quick)
    with tempfile.TemporaryDirectory(prefix="aiodurabledict-bench-") as folder:
        await _writes(report, "sqlite", lambda side: f"sqlite:///{Path(folder) / side}.db", quick)
