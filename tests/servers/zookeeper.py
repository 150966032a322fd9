"""A private ZooKeeper ensemble: three (or five) peers on free loopback ports.

Short ticks (250 ms): when the leader dies its followers see its socket close and elect another
within about a second; a frozen leader is given up after ``syncLimit`` ticks (2 s). Built for
failover tests: kill, freeze or restart any peer and wait for the quorum to come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from tests.servers._base import (
    HOST,
    Server,
    ServerExited,
    ask_all,
    free_ports,
    serve,
    wait_for,
    which,
)
from tests.servers._group import ServerGroup
from tests.servers.single import zookeeper_classpath

SERVING_MODES = frozenset({"leader", "follower"})


class ZookeeperPeer(Server):
    """One peer of an ensemble (``QuorumPeerMain`` on Debian's jars). Its data folder and ``myid``
    stay in its folder, so a restarted peer rejoins with what it had. It is ready when it serves:
    ``srvr`` reports it as leader or follower."""

    name = "zookeeper-peer"

    def __init__(
        self,
        *,
        myid: int,
        port: int,
        quorum_port: int,
        election_port: int,
        peers: str,
        tick_ms: int,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self.myid = myid
        self.quorum_port = quorum_port
        self.election_port = election_port
        self._peers = peers
        self._tick_ms = tick_ms
        self._java = which("java", hint="apt-get install default-jre-headless")
        self._classpath = zookeeper_classpath()

    def _prepare(self) -> None:
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        (data / "myid").write_text(f"{self.myid}\n")
        (self.dir / "zoo.cfg").write_text(
            f"tickTime={self._tick_ms}\n"
            "initLimit=20\n"
            "syncLimit=8\n"
            f"dataDir={data}\n"
            f"clientPort={self.port}\n"
            f"clientPortAddress={HOST}\n"
            "maxClientCnxns=0\n"
            # Sessions may be as long as the tests ask (the default cap is 20 ticks: 5 s).
            "maxSessionTimeout=60000\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,stat,mntr\n"
            f"{self._peers}"
        )

    def _command(self) -> list[str]:
        return [
            self._java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            # Starts faster and uses less CPU on a small machine; a test server needs no peak speed.
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.admin.enableServer=false",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp", self._classpath,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(self.dir / "zoo.cfg"),
        ]  # fmt: skip

    def mode(self) -> str | None:
        """``leader``, ``follower``, ... as ``srvr`` reports it; None when the peer does not serve."""
        if not self.serving:
            return None
        for line in ask_all(self.port, b"srvr").decode(errors="replace").splitlines():
            if line.startswith("Mode: "):
                return line.removeprefix("Mode: ").strip()
        return None

    def _ready(self) -> bool:
        return self.mode() in SERVING_MODES


class ZookeeperEnsemble(ServerGroup[ZookeeperPeer]):
    """``size`` peers (quorum and election ports on loopback); ``start()`` returns once they serve
    with one leader. ``connect_string`` is what a client takes."""

    name = "zookeeper-ensemble"

    def __init__(self, *, size: int = 3, tick_ms: int = 250, ready_timeout: float = 30.0) -> None:
        super().__init__(ready_timeout=ready_timeout)
        if size < 3 or size % 2 == 0:
            raise ValueError("an ensemble that survives a lost peer has an odd size of at least 3")
        self.size = size
        self.tick_ms = tick_ms

    @property
    def connect_string(self) -> str:
        """``h:p,h:p,h:p``."""
        return ",".join(node.address for node in self.nodes)

    def _make_nodes(self) -> list[ZookeeperPeer]:
        ports = free_ports(3 * self.size)
        triples = [ports[3 * i : 3 * i + 3] for i in range(self.size)]
        peers = "".join(f"server.{i + 1}={HOST}:{q}:{e}\n" for i, (_, q, e) in enumerate(triples))
        return [
            ZookeeperPeer(
                myid=i + 1,
                port=client,
                quorum_port=quorum,
                election_port=election,
                peers=peers,
                tick_ms=self.tick_ms,
                ready_timeout=self.ready_timeout,
            )
            for i, (client, quorum, election) in enumerate(triples)
        ]

    def _assemble(self) -> None:
        # A peer cannot serve before a majority runs: launch them all, then wait for the quorum.
        for node in self.nodes:
            node.launch()

        def quorum() -> ZookeeperPeer | None:
            for node in self.nodes:
                if not node.running:
                    raise ServerExited(f"{node.name} on {node.address} exited:\n{node.log_tail()}")
            return self._quorum_leader()

        wait_for(
            "zookeeper-ensemble: a quorum with one leader",
            quorum,
            self.ready_timeout,
            lambda: f"modes: {self.modes()}\n{self.log_tails()}",
        )

    def modes(self) -> dict[int, str | None]:
        """Each peer's mode by client port (None for a peer that does not serve)."""
        return {node.port: node.mode() for node in self.nodes}

    def leader(self) -> ZookeeperPeer:
        """The peer that says ``Mode: leader``; ``LookupError`` when none does."""
        for node in self.nodes:
            if node.mode() == "leader":
                return node
        raise LookupError("no peer of the ensemble leads")

    def followers(self) -> list[ZookeeperPeer]:
        """The peers that say ``Mode: follower``."""
        return [node for node in self.nodes if node.mode() == "follower"]

    def _quorum_leader(self) -> ZookeeperPeer | None:
        serving = [node for node in self.nodes if node.serving]
        if len(serving) <= self.size // 2:
            return None
        modes = {node.port: node.mode() for node in serving}
        leaders = [node for node in serving if modes[node.port] == "leader"]
        if len(leaders) != 1 or any(mode not in SERVING_MODES for mode in modes.values()):
            return None
        return leaders[0]

    def wait_for_quorum(self, timeout: float | None = None) -> ZookeeperPeer:
        """Wait until a majority runs, every running unfrozen peer serves and exactly one leads;
        returns the leader (``ServerError`` after ``timeout``)."""
        return wait_for(
            "zookeeper-ensemble: a quorum with one leader",
            self._quorum_leader,
            timeout or self.ready_timeout,
            lambda: f"modes: {self.modes()}\n{self.log_tails()}",
        )

    async def await_for_quorum(self, timeout: float | None = None) -> ZookeeperPeer:
        """``wait_for_quorum()`` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_for_quorum, timeout)


@pytest.fixture
def zookeeper_ensemble() -> Iterator[Callable[..., ZookeeperEnsemble]]:
    """Factory: ``zookeeper_ensemble(size=3)`` starts a private ZooKeeper ensemble; all its peers
    are killed at teardown."""
    yield from serve(ZookeeperEnsemble)
