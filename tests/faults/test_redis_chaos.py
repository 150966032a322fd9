"""Seeded chaos on a private Redis Cluster and a private Sentinel set (Apache Curator's cache
consistency test is the model): writer and watcher PROCESSES while nodes are killed -9, frozen and
restarted, and failed over to a lagging replica that loses writes. At the end every watcher's cache
is compared with the store read directly. It prints the writes acknowledged, the writes the engine
lost and the dicts that diverged, which must be 0.

About a minute per engine; ``AIODURABLEDICT_CHAOS_SECONDS`` sets the chaos time (default 40 s, plus
start-up and convergence), ``AIODURABLEDICT_CHAOS_SEED`` the seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

from tests.faults.redis_engines import Engine, read_store
from tests.faults.test_redis_engines_faults import private_engine

pytestmark = [pytest.mark.redis, pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(600)]

WRITERS = 2
WATCHERS = 3
KEYSPACE = "chaos"
ROOT = str(Path(__file__).resolve().parents[2])


def _count(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern)))


async def _spawn(
    role: str, spec: dict[str, Any], seed: int, folder: Path, index: int
) -> asyncio.subprocess.Process:
    log = open(folder / f"{role}{index}.log", "wb")  # noqa: ASYNC230, SIM115 - the child writes to it
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.faults.redis_chaos_worker",
            role,
            json.dumps(spec),
            KEYSPACE,
            str(seed),
            str(folder),
            str(index),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
    finally:
        log.close()


async def _faults(engine: Engine, rng: random.Random, seconds: float) -> list[str]:
    """Faults one after another until ``seconds`` have passed; the engine is healthy after each."""
    done: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        fault = rng.choice(["kill the master", "freeze the master", "lagging replica takes over"])
        if fault == "kill the master":
            await engine.fail_over(KEYSPACE)
        elif fault == "freeze the master":
            await engine.freeze_master(KEYSPACE, rng.uniform(0.5, 2.5))
        else:
            await engine.lag(KEYSPACE)
            await asyncio.sleep(rng.uniform(0.5, 1.5))  # writes the new master will not have
            await engine.take_over()
        await engine.heal()
        done.append(fault)
    return done


async def _wait(process: asyncio.subprocess.Process, within: float) -> None:
    try:
        await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        process.kill()
        await process.wait()


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_chaos_leaves_no_dict_diverged(kind: str) -> None:
    """Writers and watchers in their own processes through kills, freezes and lossy failovers: every
    watcher ends equal to the store (diverged == 0), however many writes the engine lost."""
    seconds = float(os.environ.get("AIODURABLEDICT_CHAOS_SECONDS", "40"))
    seed = int(os.environ.get("AIODURABLEDICT_CHAOS_SEED", "1234"))
    rng = random.Random(seed)
    async with private_engine(kind) as engine:
        with tempfile.TemporaryDirectory(prefix="aiodurabledict-chaos-") as name:
            folder = Path(name)
            writers = [await _spawn("writer", engine.spec, seed, folder, i) for i in range(WRITERS)]
            watchers = [await _spawn("watcher", engine.spec, seed, folder, i) for i in range(WATCHERS)]
            try:
                for _ in range(600):
                    if _count(folder, "*.ready") == WRITERS + WATCHERS:
                        break
                    await asyncio.sleep(0.1)
                faults = await _faults(engine, rng, seconds)
                (folder / "stop").touch()
                for process in writers:
                    await _wait(process, 30)
                store = await read_store(engine.spec, KEYSPACE)
                (folder / "expected.json.tmp").write_text(json.dumps(store))
                (folder / "expected.json.tmp").rename(folder / "expected.json")
                for process in watchers:
                    await _wait(process, 90)
            finally:
                for process in (*writers, *watchers):
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
            acked = lost = 0
            for i in range(WRITERS):
                report = json.loads((folder / f"writer{i}.json").read_text())
                acked += report["acked"]
                uncertain = set(report["uncertain"])
                # Journal keys are written once and never touched again: one missing is a lost write.
                lost += sum(1 for key in report["journal"] if key not in store)
                wrong = [k for k, v in report["final"].items() if k not in uncertain and store.get(k) != v]
                assert not wrong or lost, f"the store lost no journal entry but differs at {wrong}"
            results = []
            for i in range(WATCHERS):
                path = folder / f"watcher{i}.json"
                results.append(json.loads(path.read_text()) if path.exists() else {"equal": False})
            diverged = sum(1 for r in results if not r["equal"])
            print(
                f"\nchaos on {kind} (seed {seed}, {seconds:g} s, faults: {', '.join(faults) or 'none'}): "
                f"writes acknowledged {acked}, writes the engine lost {lost}, dicts diverged {diverged}"
            )
            assert diverged == 0, results
            assert acked > 0
