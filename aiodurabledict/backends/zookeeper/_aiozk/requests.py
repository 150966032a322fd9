"""Requests without aiozk's retries: reads may be sent again on a new connection, writes never.

aiozk's ``Session.send`` resends a request whose connection broke, so a write that committed before
the break commits again later, over what others wrote meanwhile. These helpers are the package's
own (its modules share them); nothing outside ``_aiozk`` uses them but ``request``.
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from typing import TYPE_CHECKING, Any

from aiozk import exc as zkexc
from aiozk import protocol
from aiozk.connection import Connection
from aiozk.states import States

if TYPE_CHECKING:
    from aiozk import ZKClient

__all__ = ["STANDALONE", "ConnectionLostError", "connected", "request", "request_size", "send_on", "suspend"]

#: Connections to a standalone server: it holds every commit, so reads need no sync first.
STANDALONE: weakref.WeakSet[Connection] = weakref.WeakSet()
_HEADER = struct.Struct("!i?i")


class ConnectionLostError(zkexc.ConnectError):  # type: ignore[misc]
    """The connection broke while a write was in flight: it may or may not have committed."""

    def __str__(self) -> str:
        return f"the connection to {self.host}:{self.port} broke during a write; it may have committed"


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
        conn = await connected(session, writing=writing)
        built = req() if callable(req) else req
        try:
            return await send_on(session, conn, built)
        except zkexc.ResponseError:
            raise
        except zkexc.ConnectError:
            suspend(session, conn)
            if not resend:
                raise ConnectionLostError(conn.host, conn.port) from None


async def connected(session: Any, *, writing: bool) -> Connection:
    """The session's connection once it may take the request (as long as the caller waits)."""
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
            suspend(session, conn)
        await session.state.wait_for(*safe)


def send_on(session: Any, conn: Connection, req: Any) -> asyncio.Future[tuple[int, Any]]:
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


def suspend(session: Any, conn: Connection) -> None:
    """The connection failed under a request: say so, so that the session looks for another."""
    if session.conn is conn and session.state.current_state in (States.CONNECTED, States.READ_ONLY):
        session.state.transition_to(States.SUSPENDED)


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
