"""A process of the Redis chaos test: ``python -m tests.faults.redis_chaos_worker ROLE SPEC KEYSPACE
SEED DIR INDEX``, ROLE being ``writer`` or ``watcher``, SPEC the engine (JSON, see redis_engines).

A writer writes at random to keys of its own (and races on a few shared ones) until ``DIR/stop``
appears, then reports what it wrote and what was acknowledged. A watcher only watches; once the test
puts the store's final content in ``DIR/expected.json`` it waits (bounded) until its cache equals
it, and reports whether it did.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from aiodurabledict import MISSING, BackendError
from aiodurabledict.backends.redis import RedisDict
from tests.faults.redis_engines import opened

FAST: dict[str, Any] = {"heartbeat": 0.5, "timeout": 1.0}
OWN_KEYS = 20
SHARED_KEYS = 4
CONVERGE_SECONDS = 60.0


def _exists(path: Path) -> bool:
    return path.exists()


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content))


async def _write(d: RedisDict[Any], rng: random.Random, index: int, out: Path, stop: Path) -> None:
    final: dict[str, Any] = {}
    uncertain: set[str] = set()
    journal: list[str] = []
    acked = failed = 0
    serial = 0
    while not _exists(stop):
        serial += 1
        key = f"w{index}:k{rng.randrange(OWN_KEYS)}"
        op = rng.random()
        touched: dict[str, Any]
        try:
            if op < 0.2:
                entry = f"w{index}:journal{serial}"
                await d.set(entry, serial)
                journal.append(entry)
                touched = {}
            elif op < 0.55:
                await d.set(key, serial)
                touched = {key: serial}
            elif op < 0.7:
                await d.pop(key, None)
                touched = {key: None}
            elif op < 0.85:
                other = f"w{index}:k{rng.randrange(OWN_KEYS)}"
                await d.update({key: serial, other: -serial})
                touched = {key: serial, other: -serial}
            else:
                shared = f"shared{rng.randrange(SHARED_KEYS)}"
                await d.compare_and_set(shared, d.view.get(shared, MISSING), serial)
                touched = {}
        except BackendError:
            failed += 1
            if 0.2 <= op < 0.85:
                uncertain.add(key)
            await asyncio.sleep(0.05)
            continue
        acked += 1
        for k, v in touched.items():
            final[k] = v
            uncertain.discard(k)
        await asyncio.sleep(rng.uniform(0.002, 0.02))
    report = {
        "acked": acked,
        "failed": failed,
        "final": final,
        "uncertain": sorted(uncertain),
        "journal": journal,
    }
    _write_json(out, report)


async def _watch(d: RedisDict[Any], expected_path: Path, out: Path) -> None:
    while not _exists(expected_path):
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.05)
    expected = _read_json(expected_path)
    deadline = time.monotonic() + CONVERGE_SECONDS
    while d != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    view = dict(d.view)
    wrong = {k for k in set(view) | set(expected) if view.get(k, "<absent>") != expected.get(k, "<absent>")}
    _write_json(out, {"equal": not wrong, "wrong": len(wrong), "live": d.live})


async def main(role: str, spec_text: str, keyspace: str, seed: int, folder: str, index: int) -> None:
    spec = json.loads(spec_text)
    where = Path(folder)
    out = where / f"{role}{index}.json"
    rng = random.Random(seed * 1000 + index)
    opts = FAST if role == "watcher" else {**FAST, "watch": False}
    for _ in range(200):  # the engine may be failing over as the process starts
        d = opened(spec, keyspace, **opts)
        try:
            await d.open()
            break
        except BackendError:
            await asyncio.sleep(0.1)
    else:
        raise SystemExit(f"{role}{index}: could not open the dict")
    try:
        _write_json(where / f"{role}{index}.ready", {})
        if role == "writer":
            await _write(d, rng, index, out, where / "stop")
        else:
            await _watch(d, where / "expected.json", out)
    finally:
        await d.aclose()


if __name__ == "__main__":
    role, spec_text, keyspace, seed, folder, index = sys.argv[1:7]
    asyncio.run(main(role, spec_text, keyspace, int(seed), folder, int(index)))
