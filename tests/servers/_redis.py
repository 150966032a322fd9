"""Talking to a private Redis node directly: one command on a connection of its own, raw replies.

The multi-node engines ask each node for its own view (INFO, CLUSTER INFO, SENTINEL ...), so a
client that follows redirections or caches a topology would hide exactly what they need to see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

from tests.servers._base import HOST, Server, ask, wait_for


def redis_call(port: int, *args: str | int, timeout: float = 2.0) -> Any:
    """Send one command to the Redis (or sentinel) on ``port`` and return its decoded raw reply.

    Raises redis-py's ``ConnectionError``/``TimeoutError`` when the node does not answer in
    ``timeout`` seconds, and ``ResponseError`` for an error reply.
    """
    # redis-py's connection class is not annotated; a bare connection means no reply callbacks.
    connection_class: Any = redis.Connection
    conn = connection_class(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        protocol=2,
    )
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        conn.disconnect()


def try_redis_call(port: int, *args: str | int, timeout: float = 1.0) -> Any:
    """``redis_call()``, or None when the node does not answer or answers with an error."""
    try:
        return redis_call(port, *args, timeout=timeout)
    except (redis.RedisError, OSError):
        return None


def parse_info(text: str | None) -> dict[str, str]:
    """``field:value`` lines of INFO or CLUSTER INFO as a dict (empty for None)."""
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


class RedisNode(Server):
    """A private redis-server that is one node of an engine: it answers PING when ready, and can
    be asked for its own view of things."""

    name = "redis-node"

    def _ready(self) -> bool:
        return self.pings()

    def pings(self) -> bool:
        """True when the node answers PING now."""
        return ask(self.port, b"PING\r\n").startswith(b"+PONG")

    def call(self, *args: str | int, timeout: float = 2.0) -> Any:
        """One command to this node (see ``redis_call()``)."""
        return redis_call(self.port, *args, timeout=timeout)

    def info(self, section: str = "replication") -> dict[str, str]:
        """``INFO <section>`` as a dict; empty when the node does not answer."""
        if not self.serving:
            return {}
        return parse_info(try_redis_call(self.port, "INFO", section))

    @property
    def role(self) -> str | None:
        """``master`` or ``slave`` as the node itself says; None when it does not answer."""
        return self.info().get("role")


def wait_replicated(
    master: RedisNode, replicas: Sequence[RedisNode], timeout: float, details: Callable[[], str]
) -> None:
    """Wait until each replica has applied everything ``master`` had taken when this was called.

    (``WAIT`` cannot do this here: it counts only the writes of the connection that sends it, and
    every ``call()`` has a connection of its own.)
    """
    target = int(master.info().get("master_repl_offset", "0"))

    def caught_up() -> bool:
        return all(int(r.info().get("slave_repl_offset", "-1")) >= target for r in replicas)

    wait_for(f"replicas of {master.address} caught up to offset {target}", caught_up, timeout, details)
