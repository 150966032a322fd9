"""ZooKeeper's ``multiRead`` (3.6+), which aiozk lacks: many reads in one request and one answer,
parsed with ``struct`` directly (it may hold thousands of values). Older servers get one pipelined
``get`` per op instead."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiozk import exc as zkexc
from aiozk import protocol
from aiozk.protocol.request import Request
from aiozk.protocol.response import Response

from .requests import STANDALONE, connected, request, send_on, suspend

if TYPE_CHECKING:
    from aiozk import ZKClient

__all__ = ["OP_GET_CHILDREN", "OP_GET_DATA", "MultiRead", "ReadResult", "read_many"]

OP_GET_DATA = 4
OP_GET_CHILDREN = 8
_OP_MULTI_READ = 22
_HEADER = struct.Struct("!i?i")
_INT = struct.Struct("!i")
# czxid, mzxid, ctime, mtime, version, cversion, aversion, ephemeralOwner, dataLength, numChildren, pzxid
_STAT = struct.Struct("!qqqqiiiqiiq")

# (data, stat) for a read of data, child names for a read of children, an error code otherwise.
ReadResult = tuple[bytes | None, tuple[int, ...]] | list[str] | int


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
        conn = await connected(session, writing=False)
        if conn.version_info is not None and tuple(conn.version_info) < (3, 6, 0):
            return await _each_read(client, ops, sync=sync)
        needs_sync = sync is not None and conn not in STANDALONE
        synced = send_on(session, conn, protocol.SyncRequest(path=sync)) if needs_sync else None
        answer = send_on(session, conn, MultiRead(ops))
        try:
            if synced is not None:
                await synced
            zxid, response = await answer
        except zkexc.ResponseError:
            raise
        except zkexc.ConnectError:
            suspend(session, conn)
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
