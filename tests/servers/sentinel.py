"""A private Redis Sentinel set: a master, its replica and three sentinels, on free loopback ports.

Fast failover settings (down after 1 s, failover timeout 3 s). Built for failover tests: kill the
master and wait for the sentinels to promote the replica, or make a failover that LOSES the writes
a lagging replica never received (``lag_replica()`` then ``take_over()``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.servers._base import HOST, Server, ServerError, free_ports, serve, wait_for, which
from tests.servers._group import ServerGroup
from tests.servers._redis import RedisNode, try_redis_call, wait_replicated

# Sentinel timers (milliseconds) for fast and steady tests, set at every start (they are not saved).
# By default a sentinel PINGs every second: with a 1 s down-after a single late reply looks like a
# dead master (then a needless second failover). It learns roles from INFO every 10 s and hears of
# the other sentinels every 2 s: slow to notice a restarted node or to start. A 2 s stall (a busy
# machine) puts it in TILT, idle for 30 s.
SENTINEL_TIMERS = (
    "ping-period", 200,
    "info-period", 1000,
    "publish-period", 500,
    "ask-period", 200,
    "tilt-period", 5000,
)  # fmt: skip


class SentinelDataNode(RedisNode):
    """A master or replica the sentinels watch. Its configuration file is written once: the
    sentinels rewrite the role they give it there, so a restart keeps that role."""

    name = "redis-sentinel-data"

    def __init__(self, *, port: int, replica_of: int | None = None, ready_timeout: float = 30.0) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self.replica_of = replica_of
        self._binary = which("redis-server", hint="apt-get install redis-server")
        self.config = self.dir / "redis.conf"

    def _prepare(self) -> None:
        if self.config.exists():
            return
        lines = [
            f"bind {HOST}",
            f"port {self.port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {self.dir}",
            'save ""',
            "appendonly no",
            "repl-diskless-sync-delay 0",
            "loglevel notice",
        ]
        if self.replica_of is not None:
            lines.append(f"replicaof {HOST} {self.replica_of}")
        self.config.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self._binary, str(self.config)]


class SentinelNode(RedisNode):
    """One sentinel (``redis-server sentinel.conf --sentinel``); it rewrites its file with what it
    learns (the current master, the other sentinels), so a restarted sentinel picks up from there."""

    name = "redis-sentinel"

    def __init__(
        self,
        *,
        port: int,
        master_port: int,
        service_name: str,
        down_after_ms: int,
        failover_timeout_ms: int,
        quorum: int,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self._binary = which("redis-server", hint="apt-get install redis-server")
        self.config = self.dir / "sentinel.conf"
        self._settings = (master_port, service_name, down_after_ms, failover_timeout_ms, quorum)

    def _prepare(self) -> None:
        if self.config.exists():
            return
        master_port, service, down_after_ms, failover_timeout_ms, quorum = self._settings
        self.config.write_text(
            f"bind {HOST}\n"
            f"port {self.port}\n"
            "daemonize no\n"
            f"dir {self.dir}\n"
            "loglevel notice\n"
            f"sentinel monitor {service} {HOST} {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def _command(self) -> list[str]:
        return [self._binary, str(self.config), "--sentinel"]

    def _wait_ready(self) -> None:
        super()._wait_ready()
        self.call("SENTINEL", "DEBUG", *SENTINEL_TIMERS)


class RedisSentinelSet(ServerGroup[Server]):
    """A master, one replica and ``sentinels`` sentinels that watch them as ``service_name``.

    ``start()`` returns once the replica is in sync and every sentinel knows the master, the
    replica and the other sentinels. The master is always found by asking the sentinels, so the
    helpers stay true after failovers.
    """

    name = "redis-sentinel"

    def __init__(
        self,
        *,
        service_name: str = "mymaster",
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(ready_timeout=ready_timeout)
        self.service_name = service_name
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data_nodes: list[SentinelDataNode] = []
        self.sentinel_nodes: list[SentinelNode] = []
        self._lagging: tuple[SentinelDataNode, SentinelDataNode] | None = None

    @property
    def sentinels(self) -> list[str]:
        """The sentinels' ``host:port``, for a client to ask them."""
        return [node.address for node in self.sentinel_nodes]

    # building

    def _make_nodes(self) -> list[Server]:
        ports = free_ports(2 + self.sentinel_count)
        master = SentinelDataNode(port=ports[0], ready_timeout=self.ready_timeout)
        replica = SentinelDataNode(port=ports[1], replica_of=ports[0], ready_timeout=self.ready_timeout)
        self.data_nodes = [master, replica]
        self.sentinel_nodes = [
            SentinelNode(
                port=port,
                master_port=master.port,
                service_name=self.service_name,
                down_after_ms=self.down_after_ms,
                failover_timeout_ms=self.failover_timeout_ms,
                quorum=self.sentinel_count // 2 + 1,
                ready_timeout=self.ready_timeout,
            )
            for port in ports[2:]
        ]
        return [*self.data_nodes, *self.sentinel_nodes]

    def _assemble(self) -> None:
        for node in self.data_nodes:
            node.launch()
        for node in self.data_nodes:
            node.wait_ready()
        # Sentinels find replicas in the master's INFO, asked at once and then every 10 s: the
        # replica must be connected by then.
        replica = self.data_nodes[1]
        wait_for(
            f"{replica.address} replicates {self.data_nodes[0].address}",
            lambda: replica.info().get("master_link_status") == "up",
            self.ready_timeout,
            self.log_tails,
        )
        for sentinel in self.sentinel_nodes:
            sentinel.launch()
        for sentinel in self.sentinel_nodes:
            sentinel.wait_ready()
        self.wait_until_ok(know_everybody=True)

    # what the sentinels say

    def _sentinel_view(self, sentinel: SentinelNode) -> dict[str, str]:
        """``SENTINEL MASTER <service>`` as one sentinel answers it (empty when it does not)."""
        reply = (
            try_redis_call(sentinel.port, "SENTINEL", "MASTER", self.service_name)
            if sentinel.serving
            else None
        )
        return dict(zip(reply[::2], reply[1::2], strict=True)) if reply else {}

    def _named_masters(self) -> dict[int, str]:
        """The master's ``host:port`` as each serving sentinel names it."""
        named = {}
        for sentinel in self.sentinel_nodes:
            reply = (
                try_redis_call(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
                if sentinel.serving
                else None
            )
            if reply:
                named[sentinel.port] = f"{reply[0]}:{reply[1]}"
        return named

    def master_address(self) -> str:
        """``host:port`` of the master, as the first sentinel that answers names it."""
        for address in self._named_masters().values():
            return address
        raise ServerError(f"no sentinel names a master for {self.service_name}:\n{self.log_tails()}")

    def master(self) -> SentinelDataNode:
        """The node the sentinels name as master."""
        port = self.node_at(self.master_address()).port
        return next(node for node in self.data_nodes if node.port == port)

    def replica(self) -> SentinelDataNode:
        """The data node that is not the master."""
        master = self.master()
        return next(node for node in self.data_nodes if node is not master)

    def _problems(self, *, know_everybody: bool = False) -> list[str]:
        problems = []
        named = self._named_masters()
        if not named:
            return ["no sentinel names a master"]
        if len(set(named.values())) > 1:
            problems.append(f"the sentinels disagree about the master: {named}")
        address = next(iter(named.values()))
        master = self.node_at(address)
        if not isinstance(master, SentinelDataNode) or master.role != "master":
            problems.append(f"{address}, named master, does not say role:master")
        for node in self.data_nodes:
            if node is master or not node.serving:
                continue
            info = node.info()
            if info.get("role") != "slave" or info.get("master_port") != str(master.port):
                problems.append(f"{node.address} is not a replica of {address}")
            elif info.get("master_link_status") != "up":
                problems.append(f"{node.address} has its link to {address} down")
        for sentinel in self.sentinel_nodes:
            view = self._sentinel_view(sentinel)
            if not view:
                continue
            if view.get("flags") != "master":
                problems.append(f"sentinel {sentinel.address} flags the master {view.get('flags')}")
            if know_everybody and (
                view.get("num-slaves") != str(len(self.data_nodes) - 1)
                or view.get("num-other-sentinels") != str(len(self.sentinel_nodes) - 1)
            ):
                problems.append(
                    f"sentinel {sentinel.address} knows {view.get('num-slaves')} replicas and "
                    f"{view.get('num-other-sentinels')} other sentinels"
                )
        return problems

    def wait_until_ok(self, timeout: float | None = None, *, know_everybody: bool = False) -> None:
        """Wait until the serving sentinels agree on a master that says so, every other serving data
        node replicates it with its link up, and (with ``know_everybody``) each sentinel knows all
        the replicas and sentinels; ``ServerError`` after ``timeout``."""
        wait_for(
            "redis-sentinel: one master that the sentinels agree on",
            lambda: not self._problems(know_everybody=know_everybody),
            timeout or self.ready_timeout,
            lambda: "\n".join(self._problems(know_everybody=know_everybody)) + "\n" + self.log_tails(),
        )

    async def await_until_ok(self, timeout: float | None = None) -> None:
        """``wait_until_ok()`` without blocking the event loop."""
        await asyncio.to_thread(self.wait_until_ok, timeout)

    def restart(self, node: Server, *, graceful: bool = True, as_replica: bool = True) -> Server:
        """Start one node again on its port. A data node that is not the master comes back as a
        replica of the current master (``as_replica``), as an operator would bring it back; with
        ``as_replica=False`` it comes back with the role it had, and the sentinels convert a former
        master only at their next INFO round (up to 10 s)."""
        if as_replica and isinstance(node, SentinelDataNode):
            master = self.master()
            if master is not node:
                if graceful:
                    node.stop()
                else:
                    node.kill()
                lines = node.config.read_text().splitlines()
                lines = [line for line in lines if not line.startswith(("replicaof ", "slaveof "))]
                node.config.write_text("\n".join([*lines, f"replicaof {HOST} {master.port}"]) + "\n")
                return node.start()
        return node.restart(graceful=graceful)

    # failovers

    def kill_master(self) -> str:
        """SIGKILL the master; returns its address (for ``wait_for_failover()``)."""
        address = self.master_address()
        self.kill(self.node_at(address))
        return address

    def _promoted(self, old_address: str) -> str | None:
        """The new master's address once every serving sentinel names it and it says so."""
        named = set(self._named_masters().values())
        if len(named) != 1 or old_address in named:
            return None
        address = named.pop()
        node = self.node_at(address)
        return address if isinstance(node, SentinelDataNode) and node.role == "master" else None

    def wait_for_failover(self, old_address: str, timeout: float | None = None) -> str:
        """Wait until every serving sentinel names a master other than ``old_address`` and that
        node says it is one; returns its address."""

        return wait_for(
            f"redis-sentinel: failover away from {old_address}",
            lambda: self._promoted(old_address),
            timeout or self.ready_timeout,
            lambda: f"sentinels name {self._named_masters()}\n{self.log_tails()}",
        )

    async def await_for_failover(self, old_address: str, timeout: float | None = None) -> str:
        """``wait_for_failover()`` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_for_failover, old_address, timeout)

    def fail_over(self, timeout: float | None = None) -> str:
        """Kill the master and wait until the sentinels have promoted the replica; its address."""
        return self.wait_for_failover(self.kill_master(), timeout)

    async def afail_over(self, timeout: float | None = None) -> str:
        """``fail_over()`` without blocking the event loop."""
        return await asyncio.to_thread(self.fail_over, timeout)

    def wait_replicated(self, timeout: float | None = None) -> None:
        """Wait until the replica has applied what the master has taken so far."""
        wait_replicated(self.master(), [self.replica()], timeout or self.ready_timeout, self.log_tails)

    def lag_replica(self) -> SentinelDataNode:
        """Let the replica catch up, then cut it off: whatever the master acknowledges from
        now on never reaches it. ``take_over()`` then makes it the master, losing those writes.

        Cutting off is freezing the replica (SIGSTOP) and having the master drop its replication
        link (``CLIENT KILL TYPE replica``). Freezing alone loses nothing: the kernel still takes
        the replication stream into the frozen replica's socket, and the thawed replica applies it.
        """
        master, replica = self.master(), self.replica()
        wait_replicated(master, [replica], self.ready_timeout, self.log_tails)
        self.freeze(replica)
        master.call("CLIENT", "KILL", "TYPE", "replica")
        self._lagging = (master, replica)
        return replica

    def take_over(self, timeout: float | None = None) -> str:
        """Kill the master, thaw the lagging replica and have a sentinel fail over to it at once
        (``SENTINEL FAILOVER``), without the writes it missed; returns the new master's address."""
        if self._lagging is None:
            raise ValueError("no replica was made to lag by lag_replica()")
        master, replica = self._lagging
        self._lagging = None
        timeout = timeout or self.ready_timeout
        self.kill(master)
        self.thaw(replica)
        wait_for(f"{replica.address} answers after the thaw", replica.pings, timeout, self.log_tails)
        # The sentinels would fail over by themselves once the master is down, but one of them may
        # try while the thawed replica still looks down to it, give up, and wait 2 failover
        # timeouts: force it (SENTINEL FAILOVER), again until one sentinel takes it on.
        deadline = time.monotonic() + timeout
        forced = False
        refusals: list[str] = []
        while (address := self._promoted(master.address)) is None:
            if time.monotonic() > deadline:
                raise ServerError(
                    f"redis-sentinel: no failover to {replica.address} in {timeout:g}s "
                    f"(sentinels said {refusals[-3:]}, name {self._named_masters()}):\n{self.log_tails()}"
                )
            for sentinel in self.sentinel_nodes:
                if forced or not sentinel.serving:
                    continue
                try:
                    sentinel.call("SENTINEL", "FAILOVER", self.service_name)
                    forced = True
                except redis.RedisError as exc:
                    refusals.append(str(exc))  # INPROG, NOGOODSLAVE: ask again
            time.sleep(0.2)
        return address

    async def atake_over(self, timeout: float | None = None) -> str:
        """``take_over()`` without blocking the event loop."""
        return await asyncio.to_thread(self.take_over, timeout)


@pytest.fixture
def redis_sentinel_set() -> Iterator[Callable[..., RedisSentinelSet]]:
    """Factory: ``redis_sentinel_set()`` starts a private master, replica and three sentinels; all
    are killed at teardown."""
    yield from serve(RedisSentinelSet)
