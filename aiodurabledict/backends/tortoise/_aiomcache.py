"""Working around aiomcache: it has no timeouts, and a call cancelled mid-way returns its connection
to the pool with the reply unread, so that the next call on that connection reads the wrong answer."""

from __future__ import annotations

from typing import Any

__all__ = ["drop_idle_connections"]


def drop_idle_connections(client: Any) -> None:
    """Close the pool's idle connections, so that no later call reads a reply meant for another."""
    pool = getattr(client, "_pool", None)
    idle = getattr(pool, "_pool", None)
    if pool is None or idle is None:
        return
    while not idle.empty():
        pool._do_close(idle.get_nowait())
