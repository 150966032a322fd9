"""A private ZooKeeper ensemble whose leader is killed under open dicts.

aiozk alone noticed a connection closed by a dying leader's followers only when its next ping timed
out: every client stalled for most of its session timeout while the election took half a second.
Here the session timeout is 30 s, and every dict must hold a write made after the election within a
few seconds of the quorum serving again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from aiodurabledict import BackendError
from aiodurabledict.backends.zookeeper import ZookeeperDict
from tests.servers import ZookeeperEnsemble, zookeeper_ensemble

__all__ = ["zookeeper_ensemble"]

pytestmark = [pytest.mark.zookeeper, pytest.mark.faults, pytest.mark.slow]

SESSION_TIMEOUT = 30.0
# Far inside the session timeout: what a dict may take, after the election, to follow again.
RESUME_WITHIN = 5.0


def _dict(servers: str, path: str, **opts: Any) -> ZookeeperDict[Any]:
    import aiozk

    client = aiozk.ZKClient(servers, session_timeout=SESSION_TIMEOUT)
    return ZookeeperDict[Any](path, client, owns_client=True, **opts)


async def _write(writer: ZookeeperDict[Any], key: str, value: Any) -> None:
    while True:
        try:
            await writer.set(key, value)
            return
        except BackendError:
            await asyncio.sleep(0.05)


async def test_every_dict_resumes_soon_after_the_leader_is_killed(
    zookeeper_ensemble: Callable[..., ZookeeperEnsemble],
) -> None:
    """Leader killed -9, twice: after each election, a write gets through and every watching dict
    (notices only: their heartbeat is longer than the test) holds it within a few seconds."""
    ensemble = zookeeper_ensemble()
    servers = ensemble.connect_string
    path = "/faults/leader-killed"
    async with AsyncExitStack() as stack:
        readers = [await stack.enter_async_context(_dict(servers, path, heartbeat=3600)) for _ in range(4)]
        writer = await stack.enter_async_context(_dict(servers, path, watch=False, timeout=2.0))
        for kill in range(2):
            await _write(writer, "k", f"before {kill}")
            async with asyncio.timeout(RESUME_WITHIN):
                while not all(d.view.get("k") == f"before {kill}" and d.live for d in readers):
                    await asyncio.sleep(0.01)
            leader = await ensemble.await_for_quorum()
            await asyncio.to_thread(leader.kill)
            await ensemble.await_for_quorum()
            async with asyncio.timeout(RESUME_WITHIN):
                await _write(writer, "k", f"after {kill}")
                while not all(d.view.get("k") == f"after {kill}" for d in readers):
                    await asyncio.sleep(0.01)
            await leader.astart()
        assert all(d == {"k": "after 1"} for d in readers)
