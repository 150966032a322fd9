"""Private Redis Cluster and Sentinel sets, seen the same way by the fault tests, the chaos test's
processes and the failover benchmark: clients, the store read directly, and the failovers.

``ClusterEngine`` and ``SentinelEngine`` wrap the server groups of ``tests.servers``; ``spec`` is
what a child process needs to reach the same engine (``engine_from_spec`` rebuilds the client side).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from aiodurabledict.backends.redis import RedisDict

__all__ = ["ClusterEngine", "Engine", "SentinelEngine", "client_from_spec", "read_store"]

# Short bounds, so that a dead or frozen node costs a second, not a client's default.
CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}


def client_from_spec(spec: dict[str, Any]) -> tuple[Any, list[Any]]:
    """A new client of the engine ``spec`` describes, and helper clients to close with it."""
    if spec["kind"] == "cluster":
        from redis.asyncio import RedisCluster
        from redis.asyncio.cluster import ClusterNode

        nodes = [ClusterNode(h, int(p)) for h, _, p in (a.rpartition(":") for a in spec["nodes"])]
        return RedisCluster(startup_nodes=nodes, **CLIENT_OPTIONS), []
    from redis.asyncio.sentinel import Sentinel

    sentinels = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in spec["sentinels"])]
    sentinel = Sentinel(sentinels, sentinel_kwargs=CLIENT_OPTIONS, **CLIENT_OPTIONS)  # type: ignore[no-untyped-call, unused-ignore]
    return sentinel.master_for(spec["service"]), list(sentinel.sentinels)


async def read_store(spec: dict[str, Any], keyspace: str) -> dict[str, Any]:
    """The dict's content as the engine's master holds it now, read directly (HGETALL, JSON)."""
    client, helpers = client_from_spec(spec)
    try:
        for attempt in range(100):
            try:
                raw = await client.hgetall(f"{{{keyspace}}}:data")
                return {k.decode(): json.loads(v) for k, v in raw.items()}
            except Exception:
                if attempt == 99:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")
    finally:
        for made in (client, *helpers):
            await made.aclose()


class Engine(Protocol):
    """A private multi-node Redis and what a test does to it."""

    spec: dict[str, Any]

    async def fail_over(self, keyspace: str) -> None:
        """Kill -9 the master that holds ``keyspace`` once its replica has everything it took (a
        failover that loses nothing), and wait until another serves it."""

    def kill_master(self, keyspace: str) -> None:
        """Kill -9 the master that holds ``keyspace`` now; the engine fails over by itself."""

    async def replicated(self, keyspace: str) -> None:
        """Wait until the replica of ``keyspace``'s master has everything the master took."""

    async def lag(self, keyspace: str) -> None:
        """Cut off the replica of ``keyspace``'s master: what the master takes now is lost by..."""

    async def take_over(self) -> None:
        """...``take_over()``: the lagging replica becomes the master, without those writes."""

    async def heal(self) -> None:
        """Bring every killed node back (as a replica) and wait until the engine is healthy."""

    async def freeze_master(self, keyspace: str, seconds: float) -> None:
        """SIGSTOP ``keyspace``'s master for ``seconds`` (a failover may follow), then SIGCONT."""


def opened(spec: dict[str, Any], keyspace: str, **opts: Any) -> RedisDict[Any]:
    """An unopened dict on the engine, owning its client (as another process would)."""
    client, helpers = client_from_spec(spec)
    return RedisDict[Any](keyspace, client, owns_client=True, also_close=helpers, **opts)


class ClusterEngine:
    """A private Redis Cluster (3 masters, 1 replica each)."""

    def __init__(self, servers: Any) -> None:
        self.servers = servers
        self.spec: dict[str, Any] = {"kind": "cluster", "nodes": list(servers.startup_nodes)}
        self._killed: list[Any] = []
        self._lagging: Any = None

    def _master(self, keyspace: str) -> Any:
        return self.servers.master_for_key(f"{{{keyspace}}}:data")

    async def fail_over(self, keyspace: str) -> None:
        await self.replicated(keyspace)
        master = self._master(keyspace)
        self._killed.append(master)
        await self.servers.afail_over(master)

    async def replicated(self, keyspace: str) -> None:
        await asyncio.to_thread(self.servers.wait_replicated, self._master(keyspace))

    def kill_master(self, keyspace: str) -> None:
        master = self._master(keyspace)
        self._killed.append(master)
        self.servers.kill(master)

    async def lag(self, keyspace: str) -> None:
        master = self._master(keyspace)
        self._lagging = await asyncio.to_thread(self.servers.lag_replica, master)
        self._killed.append(master)

    async def take_over(self) -> None:
        await self.servers.atake_over(self._lagging)
        self._lagging = None

    async def heal(self) -> None:
        while self._killed:
            await asyncio.to_thread(self.servers.restart, self._killed.pop(), graceful=False)
        await self.servers.await_until_ok()

    async def freeze_master(self, keyspace: str, seconds: float) -> None:
        master = self._master(keyspace)
        self.servers.freeze(master)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.servers.thaw(master)
        await self.servers.await_until_ok()


class SentinelEngine:
    """A private Sentinel set (a master, one replica, three sentinels)."""

    def __init__(self, servers: Any) -> None:
        self.servers = servers
        self.spec: dict[str, Any] = {
            "kind": "sentinel",
            "sentinels": list(servers.sentinels),
            "service": servers.service_name,
        }
        self._killed: list[Any] = []

    async def fail_over(self, keyspace: str) -> None:
        await self.replicated(keyspace)
        old = self.servers.node_at(self.servers.master_address())
        self._killed.append(old)
        await self.servers.afail_over()

    async def replicated(self, keyspace: str) -> None:
        await asyncio.to_thread(self.servers.wait_replicated)

    def kill_master(self, keyspace: str) -> None:
        old = self.servers.node_at(self.servers.master_address())
        self._killed.append(old)
        self.servers.kill(old)

    async def lag(self, keyspace: str) -> None:
        self._killed.append(self.servers.master())
        await asyncio.to_thread(self.servers.lag_replica)

    async def take_over(self) -> None:
        await self.servers.atake_over()

    async def heal(self) -> None:
        while self._killed:
            await asyncio.to_thread(self.servers.restart, self._killed.pop(), graceful=False)
        await self.servers.await_until_ok()

    async def freeze_master(self, keyspace: str, seconds: float) -> None:
        master = self.servers.master()
        self.servers.freeze(master)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.servers.thaw(master)
        await asyncio.sleep(0.5)
        await self.servers.await_until_ok()
