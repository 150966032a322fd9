"""Time from killing the master that holds a dict to every watching dict equal to the store, on a
private Redis Cluster and a private Sentinel set, against the failover itself measured in the same
run (kill -> the engine takes a write again). The goal: at most the failover plus one heartbeat.

Needs the private engines of ``tests.servers`` (redis-server, redis-cli); part of ``bench_redis``.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

from aiodurabledict import BackendError
from benchmarks._harness import Report, timing_of

HEARTBEAT = 0.5
WATCHERS = 5


async def run_failover(report: Report, group: str, quick: bool) -> None:
    """One row per engine: median over the rounds, baseline the failover time of the same rounds."""
    from tests.faults.redis_engines import ClusterEngine, SentinelEngine, opened, read_store
    from tests.servers import RedisClusterServers, RedisSentinelSet

    rounds = 1 if quick else 3
    for name, make, wrap in (
        ("Redis Cluster", RedisClusterServers, ClusterEngine),
        ("Redis Sentinel", RedisSentinelSet, SentinelEngine),
    ):
        servers: Any = make()
        await servers.astart()
        try:
            engine: Any = wrap(servers)
            failovers: list[float] = []
            converged: list[float] = []
            async with AsyncExitStack() as stack:
                keyspace = "bench-failover"
                opts = {"heartbeat": HEARTBEAT, "timeout": 1.0}
                watchers = [
                    await stack.enter_async_context(opened(engine.spec, keyspace, **opts))
                    for _ in range(WATCHERS)
                ]
                writer = await stack.enter_async_context(opened(engine.spec, keyspace, watch=False, **opts))
                await writer.update({f"k{i}": i for i in range(100)})
                for round_ in range(rounds):
                    # A failover that loses nothing: the replica has every write before the kill.
                    await engine.replicated(keyspace)
                    before = await read_store(engine.spec, keyspace)
                    await _until(lambda: all(w.live and w == before for w in watchers), 30)  # noqa: B023
                    killed = time.monotonic()
                    engine.kill_master(keyspace)
                    while True:  # the engine serves again when a write succeeds
                        try:
                            await writer.set("after", round_)
                            break
                        except BackendError:
                            await asyncio.sleep(0.02)
                    served = time.monotonic()
                    expected = await read_store(engine.spec, keyspace)
                    await _until(lambda: all(w == expected for w in watchers), 60)  # noqa: B023
                    done = time.monotonic()
                    failovers.append((served - killed) * 1e9)
                    converged.append((done - killed) * 1e9)
                    await engine.heal()
            timing = timing_of(converged)
            base = timing_of(failovers)
            extra = (timing.median - base.median) / 1e9
            report.add(
                group,
                f"{name}: kill the master -> every watching dict equal to the store",
                timing,
                n=WATCHERS,
                baseline="kill -> a write succeeds again (failover)",
                baseline_timing=base,
                note=f"{extra:+.2f} s over the failover; heartbeat {HEARTBEAT:g} s; {rounds} rounds",
            )
        finally:
            servers.close()


async def _until(check: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the dicts did not converge")
        await asyncio.sleep(0.005)
