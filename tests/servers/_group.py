"""Several private servers that work together (a cluster, a sentinel set, an ensemble)."""

from __future__ import annotations

import asyncio
from typing import ClassVar, Generic, Self, TypeVar

from tests.servers._base import Lifetime, Server, ServerError, ServerExited, host_port

_N = TypeVar("_N", bound=Server)


class ServerGroup(Lifetime, Generic[_N]):
    """Several private servers that work together (a cluster, a sentinel set, an ensemble).

    Subclasses make their nodes in ``_make_nodes()`` (on fresh free ports) and bring them together
    in ``_assemble()``. When a node exits while starting, ``start()`` tries again with new ports (up
    to three times), since ports picked by ``free_port()`` may be taken meanwhile. Every wait is
    bounded by ``ready_timeout``. ``close()`` kills every node by pid and removes its folder.
    """

    name: ClassVar[str] = "group"

    def __init__(self, *, ready_timeout: float = 30.0) -> None:
        self.ready_timeout = ready_timeout
        self.nodes: list[_N] = []

    def _make_nodes(self) -> list[_N]:
        raise NotImplementedError

    def _assemble(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Start every node and wait until they work together; ``ServerError`` otherwise."""
        if self.nodes:
            return self
        for attempt in range(3):
            self.nodes = self._make_nodes()
            try:
                self._assemble()
            except ServerError as exc:
                self._close_nodes()
                self.nodes = []
                if attempt == 2 or not isinstance(exc, ServerExited):
                    raise
            else:
                return self
        raise AssertionError("unreachable")

    async def astart(self) -> Self:
        """``start()`` without blocking the event loop."""
        return await asyncio.to_thread(self.start)

    def node_at(self, address: str) -> _N:
        """The node listening on ``host:port``."""
        _, port = host_port(address)
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"no node of this {self.name} listens on {address}")

    def kill(self, node: _N) -> None:
        """SIGKILL one node, as a crash would."""
        node.kill()

    def freeze(self, node: _N) -> None:
        """SIGSTOP one node: its connections stay open but it answers nothing."""
        node.freeze()

    def thaw(self, node: _N) -> None:
        """SIGCONT a frozen node."""
        node.thaw()

    def restart(self, node: _N, *, graceful: bool = True) -> _N:
        """Start one node again on the same ports, with the data and configuration it had."""
        return node.restart(graceful=graceful)

    async def arestart(self, node: _N, *, graceful: bool = True) -> _N:
        """``restart()`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.restart(node, graceful=graceful))

    def log_tails(self, lines: int = 8) -> str:
        """Each node's state and last log lines, for error messages."""
        parts = []
        for node in self.nodes:
            state = "frozen" if node.frozen else "running" if node.running else "down"
            parts.append(f"--- {node.name} {node.address} ({state}):\n{node.log_tail(lines)}")
        return "\n".join(parts)

    def close(self) -> None:
        """Kill every node and remove their folders."""
        self._close_nodes()

    def _close_nodes(self) -> None:
        for node in self.nodes:
            node.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {' '.join(node.address for node in self.nodes)}>"
