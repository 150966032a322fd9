"""Everything we add to aiozk 0.32 or work around in it, in one place for the next upgrade to check.

- ``MultiRead``: ZooKeeper's ``multiRead`` (3.6+), which aiozk lacks (older servers: pipelined gets).
- ``request``: one request, writes never resent. aiozk resends a request whose connection broke, so
  a write that committed before the break commits again later, over what others wrote meanwhile.
- ``harden``, once per client instance (never on aiozk's classes): a read loop that ends counts as a
  lost connection (aiozk ends it silently on a closed socket and stays "connected" until a ping
  times out: the whole session timeout after a leader dies), and ends on cancellation (aiozk's can
  swallow one: ``asyncio.run()`` then hangs at exit); servers are searched again at once, with a
  short jittered backoff and a bounded connect (aiozk waits 4 s, then 8 s..., and its handshake
  may wait forever on a frozen server); credentials are replayed on every new connection (aiozk
  forgets an ``AuthRequest`` made by hand); a standalone server is told apart (no sync needed).
- ``request_size``: what a transaction weighs (the server drops a connection over ``jute.maxbuffer``).
- ``close_client``: aiozk's ``close()`` leaves its tasks behind when the server is gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiozk import exc as zkexc
from aiozk import protocol
from aiozk.connection import Connection, version_regex
from aiozk.protocol.request import Request
from aiozk.protocol.response import Response
from aiozk.states import States

if TYPE_CHECKING:
    from aiozk import ZKClient

__all__ = ["ConnectionLostError", "MultiRead", "add_auth", "close_client", "harden", "read_many", "request"]

log = logging.getLogger("aiodurabledict.zookeeper")

OP_GET_DATA = 4
OP_GET_CHILDREN = 8
_OP_MULTI_READ = 22
_HEADER = struct.Struct("!i?i")
_INT = struct.Struct("!i")
# czxid, mzxid, ctime, mtime, version, cversion, aversion, ephemeralOwner, dataLength, numChildren, pzxid
_STAT = struct.Struct("!qqqqiiiqiiq")

# (data, stat) for a read of data, child names for a read of children, an error code otherwise.
ReadResult = tuple[bytes | None, tuple[int, ...]] | list[str] | int


class ConnectionLostError(zkexc.ConnectError):  # type: ignore[misc]
    """The connection broke while a write was in flight: it may or may not have committed."""

    def __str__(self) -> str:
        return f"the connection to {self.host}:{self.port} broke during a write; it may have committed"


# -- multiRead -------------------------------------------------------------------------------------


class MultiRead(Request):  # type: ignore[misc]
    """ZooKeeper's ``multiRead`` (3.6+): many reads in one request, answered in one response."""

    opcode = _OP_MULTI_READ
    parts = ()

    def __init__(self, ops: Sequence[tuple[int, str]]) -> None:
        super().__init__()
        self.ops = ops

    def serialize(self, xid: int | None = None) -> bytes:
        chunks = [_INT.pack(xid if xid is not None else 0), _INT.pack(self.opcode)]
        for opcode, path in self.ops:
            raw = path.encode()
            chunks.append(_HEADER.pack(opcode, False, -1))
            chunks.append(_INT.pack(len(raw)) + raw + b"\x00")
        chunks.append(_HEADER.pack(-1, True, -1))
        return b"".join(chunks)

    def __str__(self) -> str:
        return f"MultiRead[{len(self.ops)}]"


class MultiReadResponse(Response):  # type: ignore[misc]
    """Parses a ``multiRead`` answer with ``struct`` directly: it may hold thousands of values."""

    opcode = _OP_MULTI_READ
    parts = ()

    def __init__(self, results: list[ReadResult]) -> None:
        super().__init__()
        self.results = results

    @classmethod
    def deserialize(cls, raw: bytes) -> MultiReadResponse:
        results: list[ReadResult] = []
        view = memoryview(raw)
        offset = 0
        while True:
            kind, done, _err = _HEADER.unpack_from(raw, offset)
            offset += _HEADER.size
            if done:
                break
            if kind == OP_GET_DATA:
                (size,) = _INT.unpack_from(raw, offset)
                offset += 4
                data = None
                if size >= 0:
                    data = bytes(view[offset : offset + size])
                    offset += size
                results.append((data, _STAT.unpack_from(raw, offset)))
                offset += _STAT.size
            elif kind == OP_GET_CHILDREN:
                (count,) = _INT.unpack_from(raw, offset)
                offset += 4
                names = []
                for _ in range(count):
                    (size,) = _INT.unpack_from(raw, offset)
                    offset += 4
                    names.append(bytes(view[offset : offset + size]).decode())
                    offset += size
                results.append(names)
            else:
                (code,) = _INT.unpack_from(raw, offset)
                offset += 4
                results.append(code)
        return cls(results)


async def read_many(
    client: ZKClient, ops: Sequence[tuple[int, str]], *, sync: str | None = None
) -> tuple[int, list[ReadResult]]:
    """The reply's zxid and one result per op, in one round trip; sent again on a new connection
    when the one it went out on breaks (reads may be repeated).

    ``sync``: a path to ``sync`` first, pipelined with the reads (the server answers them after
    its follower caught up with the leader: read-after-commit on any server of an ensemble); not
    needed, and not sent, on a standalone server.
    """
    session = client.session
    while True:
        conn = await _connected(session, writing=False)
        if conn.version_info is not None and tuple(conn.version_info) < (3, 6, 0):
            return await _each_read(client, ops, sync=sync)
        needs_sync = sync is not None and conn not in _STANDALONE
        synced = _send_on(session, conn, protocol.SyncRequest(path=sync)) if needs_sync else None
        answer = _send_on(session, conn, MultiRead(ops))
        try:
            if synced is not None:
                await synced
            zxid, response = await answer
        except zkexc.ResponseError:
            raise
        except zkexc.ConnectError:
            _suspend(session, conn)
            continue
        finally:
            for future in (synced, answer):
                if future is not None and not future.done():
                    future.cancel()
        results: list[ReadResult] = response.results
        return zxid, results


async def _each_read(
    client: ZKClient, ops: Sequence[tuple[int, str]], *, sync: str | None
) -> tuple[int, list[ReadResult]]:
    """What ``multiRead`` answers, from one pipelined ``get`` per op (servers before 3.6)."""

    async def one(opcode: int, path: str) -> tuple[int, ReadResult]:
        try:
            if opcode == OP_GET_CHILDREN:
                zxid, children = await request(
                    client, protocol.GetChildrenRequest(path=path, watch=False), resend=True
                )
                return zxid, list(children.children)
            zxid, response = await request(
                client, protocol.GetDataRequest(path=path, watch=False), resend=True
            )
        except zkexc.ResponseError as error:
            return 0, int(error.error_code)
        s = response.stat
        stat = (
            s.created_zxid, s.last_modified_zxid, s.created, s.modified, s.version, s.child_version,
            s.acl_version, s.ephemeral_owner, s.data_length, s.num_children, s.last_modified_children,
        )  # fmt: skip
        return zxid, (response.data, stat)

    if sync:
        await request(client, protocol.SyncRequest(path=sync), resend=True)
    answers = await asyncio.gather(*(one(opcode, path) for opcode, path in ops))
    return max((z for z, _ in answers), default=0), [r for _, r in answers]


# -- requests --------------------------------------------------------------------------------------


async def request(client: ZKClient, req: Any, *, resend: bool = False) -> tuple[int, Any]:
    """Send ``req`` once the session is connected; its reply's zxid and response.

    ``req`` may be a callable that builds the request: it is called once connected, right before
    the request is written on that connection. Raises the server's error for the request;
    ``ConnectionLostError`` when the connection breaks with it in flight, unless ``resend`` (for
    reads: then it is sent again on the next connection). Waits for a connection as long as the
    caller lets it (callers bound every call in time).
    """
    session = client.session
    writing = callable(req) or bool(getattr(req, "writes_data", False))
    writing = writing or isinstance(req, protocol.TransactionRequest)
    while True:
        conn = await _connected(session, writing=writing)
        built = req() if callable(req) else req
        try:
            return await _send_on(session, conn, built)
        except zkexc.ResponseError:
            raise
        except zkexc.ConnectError:
            _suspend(session, conn)
            if not resend:
                raise ConnectionLostError(conn.host, conn.port) from None


async def _connected(session: Any, *, writing: bool) -> Connection:
    safe = [States.CONNECTED]
    if session.allow_read_only and not writing:
        safe.append(States.READ_ONLY)
    while True:
        if not session.started or session.closing:
            raise zkexc.ConnectError("(closed)", 0)
        conn: Connection | None = session.conn
        if session.state.current_state in safe and conn is not None and not conn.closing:
            if conn.writer is not None and not conn.writer.is_closing():
                return conn
            # Closed under us, and the read loop has not seen it yet: nothing can go out on it.
            _suspend(session, conn)
        await session.state.wait_for(*safe)


def _send_on(session: Any, conn: Connection, req: Any) -> asyncio.Future[tuple[int, Any]]:
    """Write ``req`` on ``conn`` now, as ``Session.send`` does, without its retries."""
    session.xid = session.xid + 1 if session.xid < 0x7FFFFFFF else 1
    future: asyncio.Future[tuple[int, Any]] = conn.send(req, xid=session.xid)

    def heard(done: asyncio.Future[tuple[int, Any]]) -> None:
        # Retrieves the exception too: a request nobody awaits any more must not log one.
        if not done.cancelled() and done.exception() is None:
            zxid = done.result()[0]
            if zxid is not None and zxid > 0:
                session.last_zxid = zxid
            if session.started and not session.closing:
                session.set_heartbeat()

    future.add_done_callback(heard)
    return future


def _suspend(session: Any, conn: Connection) -> None:
    """The connection failed under a request: say so, so that the session looks for another."""
    if session.conn is conn and session.state.current_state in (States.CONNECTED, States.READ_ONLY):
        session.state.transition_to(States.SUSPENDED)


# -- hardening a client ----------------------------------------------------------------------------


@dataclass
class _Extension:
    """What ``harden`` keeps on a session: the credentials to replay, the tasks it started."""

    auth: list[tuple[str, bytes]] = field(default_factory=list)
    closing: set[asyncio.Task[Any]] = field(default_factory=set)


_EXTENSION = "_aiodurabledict_extension"
# Connections to a standalone server: it holds every commit, so reads need no sync first.
_STANDALONE: weakref.WeakSet[Connection] = weakref.WeakSet()
# Servers are searched again at once, then after up to this many seconds, doubling.
_FIRST_RETRY = 0.05
_LAST_RETRY = 1.0


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

    session.find_server = find_server
    session.establish_session = establish_session
    if session.conn is not None:
        _fix_connection(session, session.conn)


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
        conn.host_ip = conn.writer.transport.get_extra_info("peername")[0]
        conn.writer.write(b"srvr")
        answer = await conn.reader.read()
        match = version_regex.match(answer.split(b"\n")[0])
        if match is None:
            raise ConnectionError
        conn.version_info = tuple(map(int, match.groups()))
        conn.start_read_only = b"READ_ONLY" in answer
        if b"\nMode: standalone" in answer:
            _STANDALONE.add(conn)

    conn._make_handshake = make_handshake
    bound = max(0.5, min(float(session.timeout) / 3, 2.0))
    try:
        async with asyncio.timeout(bound):
            await conn.connect()
    except (OSError, TimeoutError, zkexc.ZKError) as error:
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
            _suspend(session, conn)

    def start_read_loop() -> None:
        start()
        conn.read_loop_task.add_done_callback(ended)

    conn._read = read
    conn.read_response = read_response_quietly
    if conn.read_loop_task is None:
        conn.start_read_loop = start_read_loop
    else:
        conn.read_loop_task.add_done_callback(ended)


# -- authentication --------------------------------------------------------------------------------


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


# -- sizing and closing ----------------------------------------------------------------------------


def request_size(req: Any) -> int:
    """The bytes a transaction request takes on the wire (length prefix included)."""
    size = 4 + 8 + _HEADER.size
    for op in req.requests:
        size += _HEADER.size + 4 + len(op.path.encode()) + 4
        if isinstance(op, protocol.SetDataRequest | protocol.CreateRequest | protocol.Create2Request):
            size += 4 + len(op.data or b"")
        if isinstance(op, protocol.CreateRequest | protocol.Create2Request):
            size += 4 + sum(12 + len(a.id.scheme.encode()) + len(a.id.id.encode()) for a in op.acl)
    return size


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
