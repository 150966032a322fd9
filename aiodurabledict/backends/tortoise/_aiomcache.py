"""Working around aiomcache: it has no timeouts, and a call cancelled mid-way returns its connection
to the pool with the reply unread, so that the next call on that connection reads the wrong answer.
And a lean reader for the marker, the read every ``sync()`` makes: one connection of its own, one
``gets`` per round trip, and a timeout that costs no timer per call (aiomcache's pool, and an
``asyncio.timeout`` around it, add about half a round trip on loopback)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["Reader", "drop_idle_connections"]


def drop_idle_connections(client: Any) -> None:
    """Close the pool's idle connections, so that no later call reads a reply meant for another."""
    pool = getattr(client, "_pool", None)
    idle = getattr(pool, "_pool", None)
    if pool is None or idle is None:
        return
    while not idle.empty():
        pool._do_close(idle.get_nowait())


class Reader:
    """``gets`` of one key at a time on a connection of its own to ``client``'s server.

    ``gets()`` answers ``None`` while another read is under way (the caller then uses the client), and
    raises ``TimeoutError`` after ``timeout`` seconds, ``OSError`` or ``EOFError`` when the server goes
    away or answers nonsense; the connection is then dropped and the next read opens another. One
    timer serves every read: it is armed when none is, and checks the read under way when it fires.
    """

    def __init__(self, client: Any, timeout: float) -> None:
        pool = client._pool
        self.address: tuple[str, int] = (pool._host, pool._port)
        self.conn_args: dict[str, Any] = dict(pool.conn_args)
        self.timeout = timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._fired = False

    def close(self) -> None:
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        task = self._task
        if task is None:
            return
        late = time.monotonic() - self._started
        if late >= self.timeout:
            self._fired = True
            task.cancel()
        else:
            self._timer = asyncio.get_running_loop().call_later(self.timeout - late, self._check)

    async def gets(self, key: bytes) -> tuple[bytes | None, int | None] | None:
        if self._task is not None:
            return None
        task = self._task = asyncio.current_task()
        self._started = time.monotonic()
        self._fired = False
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._check)
        try:
            if self._streams is None:
                self._streams = await asyncio.open_connection(*self.address, **self.conn_args)
            reader, writer = self._streams
            writer.write(b"gets " + key + b"\r\n")
            line = await reader.readline()
            if line == b"END\r\n":
                return None, None
            head = line.split()
            if len(head) != 5 or head[0] != b"VALUE" or not head[3].isdigit() or not head[4].isdigit():
                raise ConnectionError("memcached answered something other than a value")
            data = await reader.readexactly(int(head[3]) + 2)
            if await reader.readline() != b"END\r\n":
                raise ConnectionError("memcached answered more than one value")
            return data[:-2], int(head[4])
        except BaseException as exc:
            self.close()
            if (
                isinstance(exc, asyncio.CancelledError)
                and self._fired
                and task is not None
                and task.uncancel() == 0
            ):
                raise TimeoutError(f"memcached did not answer within {self.timeout:g} s") from None
            raise
        finally:
            self._task = None
