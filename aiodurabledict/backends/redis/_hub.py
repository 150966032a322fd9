"""One pub/sub connection per client (per shard on Redis Cluster), shared by every dict on it.

A ``Hub`` holds the connection and the channels its dicts follow; one reader task parses each
notice once and hands it to every ``Feed`` of its channel. Dicts join and leave as they come and
go (SUBSCRIBE/UNSUBSCRIBE, or their sharded twins); the connection closes when the last one leaves.
A broken connection, or a subscription the server dropped, ends every affected feed with an
error, so that each dict re-checks the store and joins again. Hubs are kept per client, weakly.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any, Protocol, Self

import anyio

from ..._backend import Delta
from ...errors import BackendError
from ._redispy import REDIS_ERRORS, honour_cancel
from .notices import parse_notice

__all__ = ["Feed", "Hub", "Link", "Subscription", "hub_for"]

log = logging.getLogger("aiodurabledict.redis")

# How long one read may wait before the hub PINGs the server; a second silent slice breaks it.
_SLICE = 5.0
# Bound on leaving (UNSUBSCRIBE, closing), which runs even while the dict is being cancelled.
_LEAVE_TIMEOUT = 2.0
# Pause between attempts to subscribe while the server is failing over.
_RETRY = 0.1
# What ends the reader: the connection failed, or the server went silent.
_BREAKS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, BackendError)


class Link(Protocol):
    """How a hub reaches its server, and which pub/sub dialect it speaks there."""

    subscribe: bytes
    unsubscribe: bytes
    message: bytes

    async def connect(self) -> Any:
        """A connected redis-py ``Connection`` of the hub's own."""

    async def release(self, connection: Any) -> None:
        """Disconnect ``connection`` (it may hold unread notices: it must not be reused)."""


class Feed:
    """One subscriber's notices, in order; an exception ends them."""

    __slots__ = ("__weakref__", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()


class Hub:
    """The shared subscription connection of one client (or one cluster node)."""

    def __init__(self, link: Link, name: str) -> None:
        self.link = link
        self.name = name
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self._channels: dict[bytes, weakref.WeakSet[Feed]] = {}
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._leaving: Counter[bytes] = Counter()
        self._conn: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def idle(self) -> bool:
        """Nobody follows anything here."""
        return self._conn is None and not self._channels

    @property
    def channels(self) -> int:
        """How many channels are subscribed."""
        return len(self._channels)

    async def join(self, channel: bytes, feed: Feed, timeout: float) -> None:
        """Follow ``channel``; returns once the server confirmed the subscription."""
        async with self._lock:
            if self._conn is None:
                conn = await honour_cancel(self.link.connect(), discard=self.link.release)
                self._conn = conn
                self._reader = self.loop.create_task(self._read(conn), name=f"aiodurabledict {self.name}")
            conn = self._conn
            feeds = self._channels.get(channel)
            if feeds is None:
                feeds = self._channels[channel] = weakref.WeakSet()
                self._confirmed[channel] = self.loop.create_future()
                feeds.add(feed)
                try:
                    await conn.send_command(self.link.subscribe, channel, check_health=False)
                except REDIS_ERRORS as exc:
                    if self._break(conn, exc):
                        await self.link.release(conn)
                    raise
            else:
                feeds.add(feed)
            confirmed = self._confirmed[channel]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(confirmed)
        except TimeoutError:
            raise BackendError(f"Redis did not confirm the subscription within {timeout:g} s") from None

    async def leave(self, channel: bytes, feed: Feed) -> None:
        """Stop following ``channel`` for ``feed``; the last one out unsubscribes (or disconnects)."""
        async with self._lock:
            feeds = self._channels.get(channel)
            if feeds is None:
                return
            feeds.discard(feed)
            if feeds:
                return
            del self._channels[channel]
            confirmed = self._confirmed.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.cancel()
            conn = self._conn
            if conn is None:
                return
            if not self._channels:
                await self._shutdown()
                return
            self._leaving[channel] += 1
            try:
                await conn.send_command(self.link.unsubscribe, channel, check_health=False)
            except REDIS_ERRORS as exc:
                if self._break(conn, exc):
                    await self.link.release(conn)

    async def _shutdown(self) -> None:
        reader, self._reader = self._reader, None
        conn, self._conn = self._conn, None
        self._leaving.clear()
        try:
            if reader is not None:
                reader.cancel()
                await asyncio.wait([reader])
        finally:
            # Even when the leaver is cancelled meanwhile: nothing else holds the connection now.
            if conn is not None:
                await self.link.release(conn)

    async def _read(self, conn: Any) -> None:
        silent = 0
        try:
            while True:
                reply = await conn.read_response(disable_decoding=True, timeout=_SLICE, push_request=True)
                if reply is None:
                    silent += 1
                    if silent > 1:
                        raise BackendError(f"Redis did not answer a PING within {_SLICE:g} s")
                    await conn.send_command(b"PING", check_health=False)
                    continue
                silent = 0
                self._dispatch(conn, reply)
        except asyncio.CancelledError:
            raise
        except _BREAKS as exc:
            if self._break(conn, exc):
                await self.link.release(conn)

    def _dispatch(self, conn: Any, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2 or not isinstance(reply[0], bytes):
            return
        kind, channel = reply[0].lower(), reply[1]
        if kind == self.link.message and len(reply) == 3:
            feeds = self._channels.get(channel)
            if not feeds:
                return
            try:
                notice = parse_notice(reply[2])
            except (ValueError, TypeError):
                # Someone else's message on our channel; the heartbeat keeps every dict right.
                log.warning("ignoring a malformed notice on %r", channel)
                return
            for feed in feeds:
                feed.queue.put_nowait(notice)
        elif kind == self.link.subscribe:
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == self.link.unsubscribe:
            if self._leaving[channel] > 0:
                self._leaving[channel] -= 1
            elif channel in self._channels:
                # The server dropped a subscription we hold (its slot moved): notices may be lost.
                self._end(channel, BackendError("Redis ended the subscription (its slot moved?)"))

    def _end(self, channel: bytes, error: BaseException) -> None:
        feeds = self._channels.pop(channel, None) or ()
        confirmed = self._confirmed.pop(channel, None)
        if confirmed is not None and not confirmed.done():
            confirmed.set_exception(_copy(error))
            confirmed.exception()  # retrieved: its joiner may have gone
        for feed in feeds:
            feed.queue.put_nowait(_copy(error))

    def _break(self, conn: Any, exc: BaseException) -> bool:
        """The connection failed: end every feed; ``True`` when the caller must release ``conn``."""
        if self._conn is not conn:
            return False
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._conn = None
        self._leaving.clear()
        error = BackendError(f"the subscription broke: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        for channel in list(self._channels):
            self._end(channel, error)
        return True


def _copy(error: BaseException) -> BaseException:
    """A fresh exception per subscriber, so that tracebacks do not pile onto one object."""
    copy = BackendError(str(error))
    copy.__cause__ = error.__cause__
    return copy


# Hubs by client, then by server (None for a single server, a node name on Redis Cluster).
_hubs: weakref.WeakKeyDictionary[Any, dict[Hashable, Hub]] = weakref.WeakKeyDictionary()


def hub_for(client: Any, server: Hashable, make_link: Callable[[], Link], name: str) -> Hub:
    """The hub of ``client`` for ``server`` in the running loop, made on first use."""
    per_client = _hubs.get(client)
    if per_client is None:
        per_client = _hubs[client] = {}
    hub = per_client.get(server)
    loop = asyncio.get_running_loop()
    if hub is not None and hub.loop is not loop:
        if not hub.idle and not hub.loop.is_closed():
            raise BackendError("this Redis client is subscribed from another event loop")
        hub = None
    if hub is None:
        hub = per_client[server] = Hub(make_link(), name)
    return hub


def hubs_of(client: Any) -> list[Hub]:
    """The hubs ``client`` has (for tests and benchmarks that count connections)."""
    return list(_hubs.get(client, {}).values())


class Subscription:
    """``async with`` joins a hub (returning once Redis confirmed it); iterating yields notices.

    ``find_hub`` picks the hub (on Redis Cluster, the node that owns the channel's slot now);
    ``refused`` is told when joining failed (a cluster then refreshes its map of slots).
    """

    def __init__(
        self,
        find_hub: Callable[[], Hub],
        channel: bytes,
        *,
        timeout: float,
        refused: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self._find_hub = find_hub
        self._channel = channel
        self._timeout = timeout
        self._refused = refused
        self._feed = Feed()
        self._hub: Hub | None = None

    async def __aenter__(self) -> Self:
        """Join, trying again every ``_RETRY`` seconds for up to ``timeout``: a failover (a master
        being replaced, a slot changing hands) is followed as soon as it completes, rather than
        after the watcher's backoff. Raises ``BackendError`` once the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            try:
                # Bounded as a whole: a frozen node accepts connections and never answers them.
                async with asyncio.timeout_at(deadline):
                    self._hub = self._find_hub()
                    await self._hub.join(self._channel, self._feed, self._timeout)
                return self
            except TimeoutError:
                await self._leave()
                error = BackendError(f"could not subscribe within {self._timeout:g} s")
                await self._refuse(error)
                raise error from None
            except BaseException as exc:
                await self._leave()
                if not isinstance(exc, (*REDIS_ERRORS, BackendError)):
                    raise
                await self._refuse(exc)
                if loop.time() + _RETRY >= deadline:
                    if isinstance(exc, BackendError):
                        raise
                    raise BackendError(f"cannot subscribe: {type(exc).__name__}: {exc}") from exc
                log.debug("subscribing failed (%s: %s); trying again", type(exc).__name__, exc)
                self._feed = Feed()
                await asyncio.sleep(_RETRY)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._leave()

    async def _refuse(self, exc: BaseException) -> None:
        if self._refused is not None:
            with anyio.move_on_after(self._timeout, shield=True):
                try:
                    await self._refused(exc)
                except REDIS_ERRORS as again:
                    log.debug("refreshing after a refused subscription failed: %s", again)

    async def _leave(self) -> None:
        hub, self._hub = self._hub, None
        if hub is None:
            return
        # Shielded and bounded: leaving runs while the dict's watcher is being cancelled.
        with anyio.move_on_after(_LEAVE_TIMEOUT, shield=True):
            try:
                await hub.leave(self._channel, self._feed)
            except REDIS_ERRORS as exc:
                log.debug("leaving a subscription failed: %s", exc)

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._notices()

    async def _notices(self) -> AsyncIterator[Delta]:
        queue = self._feed.queue
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
