"""PostgreSQL LISTEN: one connection per database and event loop, shared by every dict that follows
the database, each dict on a channel of its own.

The connection is opened with the application client's settings rather than held out of its pool:
the pool keeps its size for queries, and a listening connection is never reset nor handed to another
task. It opens with the first subscriber and closes with the last. When it breaks (the server went
away, or stopped answering the keepalive), every subscriber's iteration raises, and the next
subscription opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ...errors import BackendError, map_exceptions

__all__ = ["Listener", "listen", "listeners"]

# Pool options of asyncpg that its connect() refuses; the LISTEN connection is not pooled.
_POOL_ONLY = frozenset(
    {"min_size", "max_size", "max_queries", "max_inactive_connection_lifetime", "setup", "init"}
)
# Seconds of quiet after which the connection is checked, how long the check, an opening and a
# closing may take.
_QUIET = 5.0
_PING = 2.0
_CONNECT = 10.0
_CLOSE = 2.0
#: The connection's application_name, unless the client's settings name one.
APPLICATION_NAME = "aiodurabledict-listen"


def _asyncpg() -> Any:
    # asyncpg ships no type information; it is there whenever a PostgreSQL client is.
    return importlib.import_module("asyncpg")


def _errors() -> tuple[type[BaseException], ...]:
    asyncpg = _asyncpg()
    return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


class Listener:
    """One LISTEN connection and the subscribers of each channel on it.

    The connection's own operations (LISTEN, UNLISTEN, the keepalive, closing) run one at a time in
    tasks of their own: a subscriber cancelled meanwhile (its dict closing) cannot cut one short and
    leave the connection, which others use, in an unknown state.
    """

    def __init__(self, key: Hashable, conn: Any) -> None:
        self.key = key
        self.conn = conn
        self.channels: dict[str, set[asyncio.Queue[str | BaseException]]] = {}
        self.broken: BaseException | None = None
        #: When the connection last showed it is alive, by a notice or a check (``time.monotonic()``).
        self.heard_at: float = time.monotonic()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        conn.add_termination_listener(lambda _conn: self._break(BackendError("the LISTEN connection closed")))

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self.heard_at = time.monotonic()
        for queue in self.channels.get(channel, ()):
            queue.put_nowait(payload)

    def _break(self, error: BaseException) -> None:
        if self.broken is not None:
            return
        self.broken = error
        _forget(self)
        for queues in self.channels.values():
            for queue in queues:
                queue.put_nowait(error)
        self.conn.terminate()

    async def _alone(self, what: str, operation: Callable[[], Awaitable[None]]) -> None:
        """Run ``operation`` on the connection, alone and in a task of its own; a failure breaks it."""

        async def run() -> None:
            async with self._lock:
                if self.broken is not None:
                    raise self.broken
                try:
                    with map_exceptions(*_errors(), message=what):
                        async with asyncio.timeout(_PING):
                            await operation()
                except Exception as exc:
                    self._break(exc)
                    raise

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(task)

    async def add(self, channel: str, queue: asyncio.Queue[str | BaseException]) -> None:
        """Deliver ``channel``'s payloads to ``queue`` from now on (LISTEN is live on return)."""
        if self.broken is not None:
            raise self.broken
        queues = self.channels.setdefault(channel, set())
        queues.add(queue)
        if len(queues) == 1:
            await self._alone(
                "cannot listen for changes", lambda: self.conn.add_listener(channel, self._dispatch)
            )

    async def remove(self, channel: str, queue: asyncio.Queue[str | BaseException]) -> None:
        """Stop delivering to ``queue``; UNLISTEN after the channel's last, close after the last of all."""
        queues = self.channels.get(channel, set())
        queues.discard(queue)
        if queues:
            return
        self.channels.pop(channel, None)
        if self.broken is not None:
            return
        if not self.channels:
            # The last: nobody may join this connection any more; the next subscriber opens another.
            _forget(self)
            self.broken = BackendError("the LISTEN connection was closed")
            await self._close()
            return

        async def unlisten() -> None:
            if channel not in self.channels:
                await self.conn.remove_listener(channel, self._dispatch)

        await self._alone("cannot stop listening", unlisten)

    async def _close(self) -> None:
        """Close gracefully when the server answers in time; otherwise drop the connection."""
        async with self._lock:
            try:
                async with asyncio.timeout(_CLOSE):
                    await self.conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort; terminate() always succeeds
                self.conn.terminate()
            except BaseException:
                self.conn.terminate()
                raise

    async def ping(self) -> None:
        """Make sure the connection still answers, at most once per quiet spell for all subscribers."""
        if self.broken is not None:
            raise self.broken
        if time.monotonic() - self.heard_at < _QUIET:
            return

        async def check() -> None:
            if time.monotonic() - self.heard_at >= _QUIET:
                await self.conn.fetchval("SELECT 1")
                self.heard_at = time.monotonic()

        await self._alone("the LISTEN connection stopped answering", check)


class _Registry:
    def __init__(self) -> None:
        self.listeners: dict[Hashable, Listener] = {}
        self.opening: dict[Hashable, asyncio.Lock] = {}


_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Registry] = weakref.WeakKeyDictionary()


def _registry() -> _Registry:
    loop = asyncio.get_running_loop()
    registry = _registries.get(loop)
    if registry is None:
        registry = _registries[loop] = _Registry()
    return registry


def _forget(listener: Listener) -> None:
    for registry in list(_registries.values()):
        if registry.listeners.get(listener.key) is listener:
            del registry.listeners[listener.key]


def listeners() -> list[Listener]:
    """The LISTEN connections open in this event loop."""
    return list(_registry().listeners.values())


def _connect_arguments(client: Any) -> dict[str, Any]:
    extra = {k: v for k, v in client.extra.items() if k not in _POOL_ONLY}
    settings = dict(client.server_settings)
    if client.schema:
        settings["search_path"] = client.schema
    settings.setdefault("application_name", client.application_name or APPLICATION_NAME)
    return {
        "host": client.host,
        "port": client.port,
        "user": client.user,
        "password": client.password,
        "database": client.database,
        "server_settings": settings,
        **extra,
    }


async def _listener_for(client: Any) -> Listener:
    arguments = _connect_arguments(client)
    key = repr(sorted((k, repr(v)) for k, v in arguments.items()))
    registry = _registry()
    lock = registry.opening.setdefault(key, asyncio.Lock())
    async with lock:
        listener = registry.listeners.get(key)
        if listener is not None:
            return listener
        with map_exceptions(*_errors(), message="cannot listen for changes"):
            async with asyncio.timeout(_CONNECT):
                conn = await _asyncpg().connect(**arguments)
        listener = registry.listeners[key] = Listener(key, conn)
        return listener


@asynccontextmanager
async def listen(client: Any, channel: str) -> AsyncIterator[AsyncIterator[str]]:
    """LISTEN on ``channel`` through the database's shared connection; iterate to receive the
    payloads until the connection breaks (then iteration raises ``BackendError``)."""
    listener = await _listener_for(client)
    queue: asyncio.Queue[str | BaseException] = asyncio.Queue()
    try:
        await listener.add(channel, queue)
        yield _payloads(listener, queue)
    finally:
        # Even when the subscriber is being cancelled (its dict closing): a connection others use must
        # not be left halfway through an UNLISTEN. Bounded by the timeouts of each step.
        with anyio.CancelScope(shield=True), contextlib.suppress(BackendError):
            await listener.remove(channel, queue)


async def _payloads(listener: Listener, queue: asyncio.Queue[str | BaseException]) -> AsyncIterator[str]:
    while True:
        try:
            async with asyncio.timeout(_QUIET):
                item = await queue.get()
        except TimeoutError:
            # Quiet for a while: make sure the connection is still there to hear anything.
            await listener.ping()
            continue
        if isinstance(item, BaseException):
            raise BackendError(f"the LISTEN connection broke: {item}") from item
        yield item
