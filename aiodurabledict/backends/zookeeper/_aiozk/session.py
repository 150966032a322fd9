"""Fixes installed on an aiozk client instance (never on aiozk's classes), once, by ``harden``:
a connection that ends counts as lost, servers are searched again at once, credentials are replayed
on every connection, SetWatches never blocks the repair loop; and ``close_client``."""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiozk import exc as zkexc
from aiozk import protocol
from aiozk.connection import Connection, version_regex
from aiozk.states import States

from .requests import STANDALONE, send_on, suspend

if TYPE_CHECKING:
    from aiozk import ZKClient

__all__ = ["add_auth", "close_client", "harden", "learn_mode"]

log = logging.getLogger("aiodurabledict.zookeeper")

# Connections whose server's mode we know (standalone or not).
_MODE_KNOWN: weakref.WeakSet[Connection] = weakref.WeakSet()


@dataclass
class _Extension:
    """What ``harden`` keeps on a session: the credentials to replay, the tasks it started."""

    auth: list[tuple[str, bytes]] = field(default_factory=list)
    closing: set[asyncio.Task[Any]] = field(default_factory=set)


_EXTENSION = "_aiodurabledict_extension"
# Servers are searched again at once, then after up to this many seconds, doubling.
_FIRST_RETRY = 0.05
_LAST_RETRY = 1.0


def _learn_mode(conn: Connection, answer: bytes) -> None:
    _MODE_KNOWN.add(conn)
    if b"\nMode: standalone" in answer:
        STANDALONE.add(conn)


async def learn_mode(client: ZKClient, timeout: float) -> None:
    """Ask the server of a connection made before ``harden`` whether it runs alone (``srvr``)."""
    conn = client.session.conn
    if conn is None or conn in _MODE_KNOWN:
        return
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(conn.host, conn.port)
            try:
                writer.write(b"srvr")
                answer = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return  # reads keep their sync: always correct, one leader round trip dearer
    _learn_mode(conn, answer)


def harden(client: ZKClient) -> None:
    """Install our fixes on ``client`` (idempotent): see the module docstring."""
    session = client.session
    if getattr(session, _EXTENSION, None) is not None:
        return
    ext = _Extension()
    setattr(session, _EXTENSION, ext)
    establish = session.establish_session

    async def find_server(allow_read_only: bool) -> None:
        await _find_server(session, ext, allow_read_only)

    async def establish_session() -> None:
        await establish()
        # Before the read loop starts and before anybody else may send: the server takes these
        # first, so that no request on the new connection goes out unauthenticated.
        for scheme, credential in ext.auth:
            _send_auth(session.conn, scheme, credential)

    async def set_existing_watches() -> None:
        # aiozk's sends them through Session.send, which waits for a connection that only the repair
        # loop calling this can make: a connection lost right after it was made hung the client.
        if session.watch_callbacks:
            await _set_watches(session)

    session.find_server = find_server
    session.establish_session = establish_session
    session.set_existing_watches = set_existing_watches
    if session.conn is not None:
        _fix_connection(session, session.conn)


async def _set_watches(session: Any) -> None:
    """aiozk's SetWatches, sent once: a failure drops the connection, and the repair loop goes on."""
    request = protocol.SetWatchesRequest(
        relative_zxid=session.last_zxid or 0, data_watches=[], exist_watches=[], child_watches=[]
    )
    kinds = {
        protocol.WatchEvent.CREATED: request.exist_watches,
        protocol.WatchEvent.DATA_CHANGED: request.data_watches,
        protocol.WatchEvent.CHILDREN_CHANGED: request.child_watches,
    }
    for kind, path in session.watch_callbacks:
        if kind in kinds:
            kinds[kind].append(path)
    conn = session.conn
    try:
        async with asyncio.timeout(session.timeout):
            await send_on(session, conn, request)
    except (zkexc.ZKError, TimeoutError) as error:
        log.info(
            "ZooKeeper at %s:%s did not take the watches (%s)", conn.host, conn.port, type(error).__name__
        )
        suspend(session, conn)
        if conn.writer is not None:
            conn.writer.close()


async def _find_server(session: Any, ext: _Extension, allow_read_only: bool) -> None:
    delay = _FIRST_RETRY
    while True:
        for host, port in random.sample(session.hosts, len(session.hosts)):
            conn = await _connect(session, host, port)
            if conn is None:
                continue
            if conn.start_read_only and not allow_read_only:
                _close_later(ext, conn, session.timeout)
                continue
            old, session.conn = session.conn, conn
            _fix_connection(session, conn)
            if old is not None:
                _close_later(ext, old, session.timeout)
            return
        log.debug("no ZooKeeper server answered; trying again in %.2f s", delay)
        await asyncio.sleep(random.uniform(delay / 2, delay))
        delay = min(delay * 2, _LAST_RETRY)


async def _connect(session: Any, host: str, port: int) -> Connection | None:
    """A connection that passed aiozk's handshake, within a bound; ``None`` (closed) otherwise."""
    conn = Connection(host, port, watch_handler=session.event_dispatch, read_timeout=session.read_timeout)

    async def make_handshake() -> None:
        # aiozk's, keeping the server's mode too: a standalone server needs no sync before a read.
        peer = conn.writer.transport.get_extra_info("peername")
        if peer is None:  # closed already
            raise ConnectionError
        conn.host_ip = peer[0]
        conn.writer.write(b"srvr")
        answer = await conn.reader.read()
        match = version_regex.match(answer.split(b"\n")[0])
        if match is None:
            raise ConnectionError
        conn.version_info = tuple(map(int, match.groups()))
        conn.start_read_only = b"READ_ONLY" in answer
        _learn_mode(conn, answer)

    conn._make_handshake = make_handshake
    bound = max(0.5, min(float(session.timeout) / 3, 2.0))
    try:
        async with asyncio.timeout(bound):
            await conn.connect()
    except Exception as error:  # noqa: BLE001 - as aiozk's make_connection: any failure means the next server
        # (Raising here would end aiozk's repair loop, and the client would never connect again.)
        log.debug("ZooKeeper at %s:%s did not take a connection: %s", host, port, type(error).__name__)
        if conn.writer is not None:
            conn.writer.close()
        return None
    return conn


def _close_later(ext: _Extension, conn: Connection, timeout: float) -> None:
    task = asyncio.get_running_loop().create_task(conn.close(timeout))
    ext.closing.add(task)
    task.add_done_callback(ext.closing.discard)


def _fix_connection(session: Any, conn: Connection) -> None:
    """Make ``conn``'s read loop end on cancellation and on a closed socket, and count its end as a
    lost connection: what waits on it fails at once, and the session looks for a server."""
    start = conn.start_read_loop

    async def read(size: int = -1) -> bytes:
        # aiozk reads with wait_for in a loop, which on Python 3.11 can swallow a cancellation
        # that comes with the data (the read loop then never ends: asyncio.run() hangs at exit),
        # and which reads an empty chunk from a closed socket until read_timeout passes.
        try:
            async with asyncio.timeout(conn.read_timeout):
                data: bytes = await conn.reader.readexactly(size)
                return data
        except asyncio.IncompleteReadError:
            raise ConnectionAbortedError from None
        except TimeoutError:
            raise zkexc.UnfinishedRead from None

    read_response = conn.read_response

    async def read_response_quietly(initial_connect: bool = False) -> Any:
        # A reset connection is a closed one: aiozk logs a traceback for anything but an abort.
        try:
            return await read_response(initial_connect)
        except ConnectionError:
            raise ConnectionAbortedError from None

    def ended(task: asyncio.Task[None]) -> None:
        # Pending requests would wait for answers that never come: fail them now.
        if conn.pending_count():
            conn.abort(zkexc.ConnectError)
        if task.cancelled() or conn.closing or session.closing or not session.started:
            return
        if session.conn is conn:
            log.info("the connection to ZooKeeper at %s:%s ended; looking for a server", conn.host, conn.port)
            suspend(session, conn)

    def start_read_loop() -> None:
        start()
        conn.read_loop_task.add_done_callback(ended)

    conn._read = read
    conn.read_response = read_response_quietly
    if conn.read_loop_task is None:
        conn.start_read_loop = start_read_loop
    else:
        conn.read_loop_task.add_done_callback(ended)


def _send_auth(conn: Connection, scheme: str, credential: bytes) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = conn.send(protocol.AuthRequest(type=0, scheme=scheme, auth=credential))

    def answered(done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.warning("ZooKeeper refused the %s credentials: %s", scheme, type(done.exception()).__name__)

    future.add_done_callback(answered)
    return future


async def add_auth(client: ZKClient, scheme: str, credential: bytes) -> None:
    """Authenticate ``client``'s connection now (when it has one) and every new one after."""
    harden(client)
    session = client.session
    ext: _Extension = getattr(session, _EXTENSION)
    if (scheme, credential) in ext.auth:
        return
    ext.auth.append((scheme, credential))
    conn = session.conn
    if conn is not None and not conn.closing and session.state.current_state == States.CONNECTED:
        await _send_auth(conn, scheme, credential)


async def close_client(client: ZKClient, timeout: float) -> None:
    """Close an aiozk client and leave none of its tasks or timers behind, even when the server is gone.

    aiozk's ``close()`` waits for a connected session to say goodbye and, when that fails, returns
    with its heartbeat timer, repair loop and reader still scheduled.
    """
    session = client.session
    try:
        async with asyncio.timeout(timeout):
            await client.close()
    except (zkexc.ZKError, TimeoutError, OSError) as error:
        log.debug("closing the ZooKeeper session failed: %s", type(error).__name__)
    tasks: list[asyncio.Task[Any]] = []
    if session.heartbeat_handle is not None:
        session.heartbeat_handle.cancel()
        session.heartbeat_handle = None
    for task in (session.heartbeat_task, session.repair_loop_task):
        if task is not None and not task.done():
            task.cancel()
            tasks.append(task)
    ext: _Extension | None = getattr(session, _EXTENSION, None)
    if ext is not None:
        for task in ext.closing:
            task.cancel()
            tasks.append(task)
    conn = session.conn
    if conn is not None:
        conn.closing = True
        if conn.read_loop_task is not None and not conn.read_loop_task.done():
            conn.read_loop_task.cancel()
            tasks.append(conn.read_loop_task)
        for pending in conn.drain_all_pending():
            if not pending.done():
                pending.set_exception(zkexc.ConnectError(conn.host, conn.port))
        if conn.writer is not None:
            conn.writer.close()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    session.closing = False
    session.started = False
