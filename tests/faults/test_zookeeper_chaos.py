"""A seeded chaos test on a private ZooKeeper ensemble, after Apache Curator's cache-consistency test.

Writer and watcher processes (``zookeeper_chaos_worker``) keep dicts on the ensemble while its peers
are killed -9, frozen (SIGSTOP) and restarted, the leader more often than the others. Then the
ensemble heals, the writers stop, the tree is read directly, and every process's dict is compared
with it. It prints the writes acknowledged, the writes the store lost (an acknowledged value that is
not in the tree, and no later failed write of that key could explain it) and the dicts that diverged.

About a minute by default; ``AIODURABLEDICT_CHAOS_SECONDS`` sets the seconds of chaos (40 by
default) and ``AIODURABLEDICT_CHAOS_SEED`` the seed (a run prints the seed it used).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiodurabledict.backends.zookeeper import close_client, unescape_key
from tests.servers import ZookeeperEnsemble, ZookeeperPeer, zookeeper_ensemble

__all__ = ["zookeeper_ensemble"]

CHAOS_SECONDS = float(os.environ.get("AIODURABLEDICT_CHAOS_SECONDS", "40"))
SEED = int(os.environ.get("AIODURABLEDICT_CHAOS_SEED", "20261202"))
WRITERS = 2
WATCHERS = 3
# After the chaos, how long the dicts may take to reach the tree (they need a heartbeat or two).
SETTLE_SECONDS = 30.0
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.zookeeper,
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.timeout(CHAOS_SECONDS + 240),
]


class Worker:
    """One worker process, spoken to one JSON line at a time."""

    def __init__(self, role: str, servers: str, path: str, seed: int) -> None:
        self.role = role
        self.args = [role, servers, path, str(seed)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.faults.zookeeper_chaos_worker",
            *self.args,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )

    async def ask(self, command: str | None, *, within: float = 60.0) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        if command is not None:
            proc.stdin.write(f"{command}\n".encode())
            await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), within)
        assert line, f"the {self.role} process ended (exit status {proc.returncode})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def end(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"exit\n")
            await proc.stdin.drain()
            await asyncio.wait_for(proc.wait(), 20)
        except (TimeoutError, ConnectionError, AssertionError):
            proc.kill()
            await proc.wait()


async def chaos(ensemble: ZookeeperEnsemble, rng: random.Random, seconds: float) -> list[str]:
    """Kill, freeze and restart peers, one at a time, for ``seconds``; what was done, in order."""
    done: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        action = rng.choice(["kill", "kill", "freeze", "freeze", "restart"])
        node = await _pick(ensemble, rng)
        pause = rng.uniform(0.5, 3.0)
        done.append(f"{time.monotonic() - started:5.1f}s {action} {node.address} for {pause:.1f}s")
        if action == "kill":
            await asyncio.to_thread(node.kill)
            await asyncio.sleep(pause)
            await node.astart()
        elif action == "freeze":
            node.freeze()
            await asyncio.sleep(pause)
            node.thaw()
        else:
            await ensemble.arestart(node, graceful=rng.random() < 0.5)
        await asyncio.sleep(rng.uniform(0.5, 2.0))
    return done


async def _pick(ensemble: ZookeeperEnsemble, rng: random.Random) -> ZookeeperPeer:
    if rng.random() < 0.5:
        try:
            return await asyncio.to_thread(ensemble.leader)
        except LookupError:
            pass
    return rng.choice(ensemble.nodes)


async def heal(ensemble: ZookeeperEnsemble) -> None:
    for node in ensemble.nodes:
        node.thaw()
        if not node.running:
            await node.astart()
    await ensemble.await_for_quorum()


async def read_tree(servers: str, path: str) -> dict[str, Any]:
    """The dict's content read directly from the tree (every key node's JSON value)."""
    import aiozk

    client = aiozk.ZKClient(servers, session_timeout=10)
    try:
        async with asyncio.timeout(60):
            await client.start()
            tree: dict[str, Any] = {}
            for name in await client.get_children(path):
                key = unescape_key(name)
                if key is not None:
                    tree[key] = json.loads(await client.get_data(f"{path}/{name}"))
            return tree
    finally:
        await close_client(client, 2.0)


def lost_writes(logs: list[dict[str, Any]], tree: dict[str, Any]) -> list[str]:
    """Keys whose value in the tree is neither the last acknowledged write nor a later failed one."""
    lost = []
    for log in logs:
        for key, entry in log["keys"].items():
            if tree.get(key) not in [entry["acked"], *entry["maybe"]]:
                lost.append(f"{key}: tree {tree.get(key)!r}, acknowledged {entry['acked']!r}")
    return lost


async def test_caches_survive_chaos_on_an_ensemble(
    zookeeper_ensemble: Callable[..., ZookeeperEnsemble],
) -> None:
    """Peers killed, frozen and restarted under writers and watchers: no acknowledged write is lost
    and every dict ends equal to the tree."""
    ensemble = zookeeper_ensemble()
    rng = random.Random(SEED)
    servers = ensemble.connect_string
    path = f"/chaos/{uuid.uuid4().hex}"
    writers = [Worker("writer", servers, path, SEED + i) for i in range(WRITERS)]
    watchers = [Worker("watcher", servers, path, SEED + 100 + i) for i in range(WATCHERS)]
    workers = writers + watchers
    try:
        for worker in workers:
            await worker.start()
        for worker in workers:
            assert (await worker.ask(None))["ready"]
        actions = await chaos(ensemble, rng, CHAOS_SECONDS)
        await heal(ensemble)
        logs = [await writer.ask("stop") for writer in writers]
        tree = await read_tree(servers, path)
        lost = lost_writes(logs, tree)
        reports: list[dict[str, Any]] = []
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            reports = [await worker.ask("report") for worker in workers]
            if all(r["cache"] == tree for r in reports) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        caches = [r["cache"] for r in reports]
        diverged = sum(cache != tree for cache in caches)
        acknowledged = sum(log["acknowledged"] for log in logs)
        failed = sum(log["failed"] for log in logs)
        print(
            f"\nZooKeeper chaos (seed {SEED}, {CHAOS_SECONDS:g} s, {len(actions)} faults): "
            f"writes acknowledged {acknowledged}, failed {failed}, lost {len(lost)}; "
            f"dicts diverged {diverged} of {len(caches)}"
        )
        for action in actions:
            print(f"  {action}")
        for worker, report in zip(workers, reports, strict=True):
            if report["cache"] != tree:
                print(f"  diverged: a {worker.role}: { ({k: v for k, v in report.items() if k != 'cache'}) }")
        assert acknowledged > 0
        assert lost == []
        assert diverged == 0, [
            (
                w.role,
                {k: v for k, v in r.items() if k != "cache"},
                sorted(set(r["cache"].items()) ^ set(tree.items())),
            )
            for w, r in zip(workers, reports, strict=True)
            if r["cache"] != tree
        ]
    finally:
        await asyncio.gather(*(worker.end() for worker in workers))
