"""A writer or a watcher process of the ZooKeeper chaos test (``test_zookeeper_chaos.py`` runs it).

    python -m tests.faults.zookeeper_chaos_worker writer|watcher SERVERS PATH SEED

Both open a ``ZookeeperDict`` on the ensemble and read commands on stdin, one per line:
``report`` prints the dict's cache as one JSON line (never syncing first: the cache as the watcher
keeps it); ``stop`` ends the writes (a writer then prints its log of writes as one JSON line:
for every key, the value of its last acknowledged write and the values of the writes after it
that failed, any of which may have committed); ``exit`` closes the dict and ends the process.
A writer writes its own keys only, so that its log says everything the store may hold for them.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

import aiozk

from aiodurabledict import BackendError
from aiodurabledict.backends.zookeeper import ZookeeperDict

KEYS = 6


async def _open(servers: str, path: str, *, watch: bool) -> ZookeeperDict[Any]:
    while True:
        client = aiozk.ZKClient(servers, session_timeout=6)
        d = ZookeeperDict[Any](path, client, owns_client=True, heartbeat=0.5, timeout=2.0, watch=watch)
        try:
            await d.open()
        except BackendError:
            await asyncio.sleep(0.2)
            continue
        return d


class Log:
    """What a writer may have left in the store for each of its keys (``None``: absent)."""

    def __init__(self, keys: list[str]) -> None:
        self.acked: dict[str, int | None] = dict.fromkeys(keys)
        self.maybe: dict[str, list[int | None]] = {k: [] for k in keys}
        self.acknowledged = 0
        self.failed = 0

    def attempt(self, changes: dict[str, int | None]) -> None:
        """A write is about to go out: until acknowledged, it may or may not commit."""
        for key, value in changes.items():
            self.maybe[key].append(value)

    def ack(self, changes: dict[str, int | None]) -> None:
        self.acknowledged += 1
        for key, value in changes.items():
            self.acked[key] = value
            self.maybe[key] = []

    def as_json(self) -> dict[str, Any]:
        return {
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "keys": {k: {"acked": v, "maybe": self.maybe[k]} for k, v in self.acked.items()},
        }


async def _write(d: ZookeeperDict[Any], rng: random.Random, name: str, stopping: asyncio.Event) -> Log:
    keys = [f"{name}-{k}" for k in range(KEYS)]
    log = Log(keys)
    counter = 0
    while not stopping.is_set():
        counter += 1
        roll = rng.random()
        key = rng.choice(keys)
        if roll < 0.75:
            changes: dict[str, int | None] = {key: counter}
        elif roll < 0.9:
            changes = {key: counter, rng.choice(keys): counter}
        else:
            changes = {key: None}
        log.attempt(changes)
        try:
            if roll < 0.75:
                await d.set(key, counter)
            elif roll < 0.9:
                await d.update(changes)
            else:
                await d.pop(key, None)
        except BackendError:
            log.failed += 1
        else:
            log.ack(changes)
        await asyncio.sleep(rng.uniform(0.005, 0.03))
    return log


def _client_state(d: ZookeeperDict[Any]) -> str:
    """The aiozk session's state, for a report on a dict that did not converge."""
    session = d.backend.client.session  # type: ignore[attr-defined]
    repair = session.repair_loop_task
    ended = repair is not None and repair.done()
    return f"{session.state.current_state}, repair loop {'ended' if ended else 'runs'}" + (
        f" ({repair.exception()!r})" if ended and not repair.cancelled() else ""
    )


async def main(role: str, servers: str, path: str, seed: int) -> None:
    rng = random.Random(seed)
    d = await _open(servers, path, watch=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stopping = asyncio.Event()
    writes = asyncio.create_task(_write(d, rng, f"w{seed}", stopping)) if role == "writer" else None
    print(json.dumps({"ready": True}), flush=True)
    try:
        while line := (await reader.readline()).strip():
            if line == b"report":
                status = d.status
                report = {"cache": dict(d.view), "version": d.version, "live": d.live}
                report |= {"connected": status.connected, "error": status.error, "client": _client_state(d)}
                print(json.dumps(report), flush=True)
            elif line == b"stop":
                stopping.set()
                log = await writes if writes is not None else Log([])
                print(json.dumps(log.as_json()), flush=True)
            elif line == b"exit":
                break
    finally:
        stopping.set()
        if writes is not None and not writes.done():
            writes.cancel()
        await d.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
