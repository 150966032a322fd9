"""A private Redis Cluster: N masters with their replicas, on free loopback ports.

Built for failover tests: kill, freeze or restart any node, watch a replica take over, and make a
takeover that LOSES the writes a lagging replica never received (``lag_replica()`` then
``take_over()``), as asynchronous replication allows.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.servers._base import HOST, ServerError, free_ports, serve, wait_for, which
from tests.servers._group import ServerGroup
from tests.servers._redis import RedisNode, parse_info, try_redis_call, wait_replicated

SLOTS = 16384


class RedisClusterNode(RedisNode):
    """One ``redis-server --cluster-enabled yes``; its ``nodes.conf`` stays in its folder, so a
    restarted node rejoins the cluster it was in (as it left it: without data, nothing is saved)."""

    name = "redis-cluster-node"

    def __init__(
        self, *, port: int, bus_port: int, node_timeout_ms: int, ready_timeout: float = 30.0
    ) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self.bus_port = bus_port
        self.node_timeout_ms = node_timeout_ms
        self._binary = which("redis-server", hint="apt-get install redis-server")

    def _command(self) -> list[str]:
        return [
            self._binary,
            "--bind", HOST,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", str(self.dir / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica may take over however long it was cut off (a frozen one too); the topology
            # stays as built: no replica wanders to another master.
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",
            "--loglevel", "notice",
        ]  # fmt: skip


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES``: a node as another node sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None

    @property
    def is_master(self) -> bool:
        """Serves slots (or would, once it has some)."""
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        """Flagged as failing (``fail``) or suspected (``fail?``)."""
        return bool(self.flags & {"fail", "fail?"})


def parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    """The lines of ``CLUSTER NODES``."""
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        views.append(
            ClusterNodeView(
                id=fields[0],
                port=int(address.rsplit(":", 1)[1]),
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
            )
        )
    return views


class RedisClusterServers(ServerGroup[RedisClusterNode]):
    """``masters`` masters with ``replicas`` replicas each, made one cluster by ``redis-cli --cluster
    create``; ``start()`` returns once every node says ``cluster_state:ok``.

    Nodes are found by what the running ones say (``CLUSTER NODES``/``SLOTS``/``KEYSLOT``), so the
    helpers stay true after failovers: ``master_for_key()``, ``replica_of()``, ``fail_over()``, ...
    """

    name = "redis-cluster"

    def __init__(
        self, *, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1500, ready_timeout: float = 30.0
    ) -> None:
        super().__init__(ready_timeout=ready_timeout)
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.masters_count = masters
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        self._cli = which("redis-cli", hint="apt-get install redis-tools")
        self._ids: dict[int, str] = {}
        self._lagging: dict[int, RedisClusterNode] = {}

    @property
    def startup_nodes(self) -> list[str]:
        """Every node's ``host:port``, for a cluster client to start from."""
        return [node.address for node in self.nodes]

    # building

    def _make_nodes(self) -> list[RedisClusterNode]:
        count = self.masters_count * (1 + self.replicas_per_master)
        ports = free_ports(2 * count)
        return [
            RedisClusterNode(
                port=ports[2 * i],
                bus_port=ports[2 * i + 1],
                node_timeout_ms=self.node_timeout_ms,
                ready_timeout=self.ready_timeout,
            )
            for i in range(count)
        ]

    def _assemble(self) -> None:
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_ready()
        command = [self._cli, "--cluster", "create", *self.startup_nodes]
        command += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=self.ready_timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"redis-cli --cluster create took over {self.ready_timeout}s") from exc
        if result.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}")
        for node in self.nodes:
            self._ids[node.port] = node.call("CLUSTER", "MYID")
        wait_for(
            "redis-cluster: every node sees every master with its replicas, in sync",
            lambda: not self._topology_problems(),
            self.ready_timeout,
            lambda: "\n".join(self._topology_problems()) + "\n" + self.log_tails(),
        )
        self.wait_until_ok()

    def _topology_problems(self) -> list[str]:
        """What keeps a new cluster from being as built, as each node sees it."""
        problems = []
        for node in self.nodes:
            reply = try_redis_call(node.port, "CLUSTER", "NODES")
            views = parse_cluster_nodes(reply or "")
            masters = [v for v in views if v.is_master and not v.failed]
            if len(views) != len(self.nodes) or len(masters) != self.masters_count:
                problems.append(f"{node.address} sees {len(views)} nodes, {len(masters)} of them masters")
            for master in masters:
                count = sum(1 for v in views if v.master_id == master.id and not v.failed)
                if count != self.replicas_per_master:
                    problems.append(f"{node.address} sees {count} replicas of {HOST}:{master.port}")
            info = node.info()
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                problems.append(f"replica {node.address} is not in sync yet")
        return problems

    # what the nodes say

    def node_id(self, node: RedisClusterNode) -> str:
        """The node's cluster id (it keeps it across restarts)."""
        return self._ids[node.port]

    def _serving(self) -> list[RedisClusterNode]:
        return [node for node in self.nodes if node.serving]

    def _ask_any(self, *args: str | int) -> Any:
        """The reply of the first serving node that answers."""
        for node in self._serving():
            reply = try_redis_call(node.port, *args)
            if reply is not None:
                return reply
        raise ServerError(f"no node of the cluster answers {' '.join(map(str, args))}:\n{self.log_tails()}")

    def view(self) -> list[ClusterNodeView]:
        """``CLUSTER NODES`` as the first serving node that answers sees it."""
        return parse_cluster_nodes(self._ask_any("CLUSTER", "NODES"))

    def masters(self) -> list[RedisClusterNode]:
        """The nodes that are masters and not failing."""
        return [self.node_at(f"{HOST}:{v.port}") for v in self.view() if v.is_master and not v.failed]

    def replica_of(self, master: RedisClusterNode) -> RedisClusterNode:
        """A replica (not failing) of ``master``; ``LookupError`` when it has none."""
        replicas = self.replicas_of(master)
        if not replicas:
            raise LookupError(f"{master.address} has no replica")
        return replicas[0]

    def _slot_map(self, node: RedisClusterNode) -> list[tuple[int, int, int]] | None:
        """``(first slot, last slot, master port)`` ranges as ``node`` sees them, sorted."""
        reply = try_redis_call(node.port, "CLUSTER", "SLOTS")
        return None if reply is None else parse_slots(reply)

    def master_for_slot(self, slot: int) -> RedisClusterNode:
        """The node that serves ``slot`` (as ``CLUSTER SLOTS`` says)."""
        for first, last, port in parse_slots(self._ask_any("CLUSTER", "SLOTS")):
            if first <= slot <= last:
                return self.node_at(f"{HOST}:{port}")
        raise LookupError(f"no node serves slot {slot}")

    def slot_of(self, key: str) -> int:
        """``CLUSTER KEYSLOT key``."""
        return int(self._ask_any("CLUSTER", "KEYSLOT", key))

    def master_for_key(self, key: str) -> RedisClusterNode:
        """The node that serves ``key``."""
        return self.master_for_slot(self.slot_of(key))

    def slots_of(self, master: RedisClusterNode) -> list[int]:
        """The first slot of each range that ``master`` serves."""
        return [
            first for first, _, port in parse_slots(self._ask_any("CLUSTER", "SLOTS")) if port == master.port
        ]

    def _problems(self) -> list[str]:
        problems = []
        maps = {}
        serving = {node.port for node in self._serving()}
        for node in self._serving():
            info = parse_info(try_redis_call(node.port, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                problems.append(
                    f"{node.address}: cluster_state:{info.get('cluster_state')} "
                    f"cluster_slots_ok:{info.get('cluster_slots_ok')}"
                )
            slot_map = self._slot_map(node)
            maps[node.port] = slot_map
            for _, _, port in slot_map or []:
                if port not in serving:
                    problems.append(f"{node.address} still routes slots to {HOST}:{port}, which is down")
                    break
        if len({repr(m) for m in maps.values()}) > 1:
            problems.append("the nodes disagree about which master serves which slots")
        return problems

    def wait_until_ok(self, timeout: float | None = None) -> None:
        """Wait until every running, unfrozen node says ``cluster_state:ok`` with all slots served,
        they agree on the slot map, and every master in it runs; ``ServerError`` after ``timeout``."""
        wait_for(
            "redis-cluster: cluster_state:ok on every node",
            lambda: not self._problems(),
            timeout or self.ready_timeout,
            lambda: "\n".join(self._problems()) + "\n" + self.log_tails(),
        )

    async def await_until_ok(self, timeout: float | None = None) -> None:
        """``wait_until_ok()`` without blocking the event loop."""
        await asyncio.to_thread(self.wait_until_ok, timeout)

    def restart(self, node: RedisClusterNode, *, graceful: bool = True) -> RedisClusterNode:
        """Start one node again on its ports and wait until it is back in the cluster: every node
        sees it healthy, and a former master that lost its slots meanwhile replicates their new
        master, in sync (it comes back empty: nothing is saved)."""
        node.restart(graceful=graceful)
        wait_for(
            f"redis-cluster: {node.address} back in the cluster",
            lambda: not self._rejoin_problems(node),
            self.ready_timeout,
            lambda: "\n".join(self._rejoin_problems(node)) + "\n" + self.log_tails(),
        )
        return node

    def _rejoin_problems(self, node: RedisClusterNode) -> list[str]:
        problems = self._problems()
        own = [
            v
            for v in parse_cluster_nodes(try_redis_call(node.port, "CLUSTER", "NODES") or "")
            if "myself" in v.flags
        ]
        if not own:
            return [*problems, f"{node.address} does not answer CLUSTER NODES"]
        role = (own[0].is_master, own[0].master_id)
        if own[0].is_master and not self.slots_of(node):
            problems.append(f"{node.address} is a master without slots")
        if not own[0].is_master and node.info().get("master_link_status") != "up":
            problems.append(f"{node.address} is not in sync with its master yet")
        for other in self._serving():
            views = parse_cluster_nodes(try_redis_call(other.port, "CLUSTER", "NODES") or "")
            seen = [v for v in views if v.port == node.port]
            if not seen or seen[0].failed or (seen[0].is_master, seen[0].master_id) != role:
                problems.append(f"{other.address} does not see {node.address} healthy, in its role yet")
        return problems

    # failovers

    def fail_over(self, master: RedisClusterNode, timeout: float | None = None) -> RedisClusterNode:
        """Kill ``master`` and wait until its replica serves its slots; returns that new master."""
        slot = self.slots_of(master)[0]
        self.kill(master)
        self.wait_until_ok(timeout)
        return self.master_for_slot(slot)

    async def afail_over(self, master: RedisClusterNode, timeout: float | None = None) -> RedisClusterNode:
        """``fail_over()`` without blocking the event loop."""
        return await asyncio.to_thread(self.fail_over, master, timeout)

    def replicas_of(self, master: RedisClusterNode) -> list[RedisClusterNode]:
        """The replicas (not failing) of ``master``."""
        master_id = self.node_id(master)
        return [
            self.node_at(f"{HOST}:{v.port}") for v in self.view() if v.master_id == master_id and not v.failed
        ]

    def wait_replicated(self, master: RedisClusterNode, timeout: float | None = None) -> None:
        """Wait until every serving replica of ``master`` has applied what ``master`` has taken so far."""
        replicas = [replica for replica in self.replicas_of(master) if replica.serving]
        wait_replicated(master, replicas, timeout or self.ready_timeout, self.log_tails)

    def lag_replica(self, master: RedisClusterNode) -> RedisClusterNode:
        """Let ``master``'s replica catch up, then cut it off: whatever ``master``
        acknowledges from now on never reaches it. ``take_over()`` then makes it the master, losing
        those writes.

        Cutting off is freezing the replica (SIGSTOP) and having the master drop its replication
        link (``CLIENT KILL TYPE replica``). Freezing alone loses nothing: the kernel still takes
        the replication stream into the frozen replica's socket, and the thawed replica applies it.
        """
        replica = self.replica_of(master)
        self.wait_replicated(master)
        self.freeze(replica)
        master.call("CLIENT", "KILL", "TYPE", "replica")
        self._lagging[replica.port] = master
        return replica

    def take_over(self, replica: RedisClusterNode, timeout: float | None = None) -> RedisClusterNode:
        """Kill the master of the lagging ``replica``, thaw the replica and make it take over at once
        (``CLUSTER FAILOVER TAKEOVER``), without the writes it missed; wait until the cluster is ok."""
        master = self._lagging.pop(replica.port, None)
        if master is None:
            raise ValueError(f"{replica.address} was not made to lag by lag_replica()")
        timeout = timeout or self.ready_timeout
        self.kill(master)
        self.thaw(replica)
        wait_for(f"{replica.address} answers after the thaw", replica.pings, timeout, self.log_tails)
        replica.call("CLUSTER", "FAILOVER", "TAKEOVER")
        wait_for(
            f"{replica.address} becomes a master",
            lambda: replica.role == "master",
            timeout,
            self.log_tails,
        )
        self.wait_until_ok(timeout)
        return replica

    async def atake_over(self, replica: RedisClusterNode, timeout: float | None = None) -> RedisClusterNode:
        """``take_over()`` without blocking the event loop."""
        return await asyncio.to_thread(self.take_over, replica, timeout)


def parse_slots(reply: list[Any]) -> list[tuple[int, int, int]]:
    """``(first slot, last slot, master port)`` from a ``CLUSTER SLOTS`` reply."""
    return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)


@pytest.fixture
def redis_cluster_servers() -> Iterator[Callable[..., RedisClusterServers]]:
    """Factory: ``redis_cluster_servers(masters=3, replicas=1)`` starts a private Redis Cluster; all
    its nodes are killed at teardown."""
    yield from serve(RedisClusterServers)
