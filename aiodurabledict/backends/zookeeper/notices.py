"""Notices: one data watch on the dict's node, used as a doorbell, rather than one watch per key.

Every write rings it; re-reading the node re-arms it, and the reads of a check say exactly what
changed since the previous notice (each notice's ``prev`` is the version of the one before). The
subscription ends when the client's connection is suspended or its session lost: the dict then
subscribes again (a new watch, on the new connection) and checks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

from aiozk import protocol
from aiozk.states import States

from ..._backend import Delta
from .reads import Reader

__all__ = ["subscribe"]

_KINDS = (protocol.WatchEvent.CREATED, protocol.WatchEvent.DELETED, protocol.WatchEvent.DATA_CHANGED)


@asynccontextmanager
async def subscribe(reader: Reader) -> AsyncIterator[AsyncIterator[Delta]]:
    """Follow the dict's node; each notice carries what changed since the one before."""
    tree = reader.tree
    session = tree.client.session
    bell = asyncio.Event()

    def ring(_path: str) -> None:
        bell.set()

    for kind in _KINDS:
        session.add_watch_callback(kind, tree.root, ring)
    broken: asyncio.Future[None] | None = None
    notices: AsyncGenerator[Delta, None] | None = None
    try:
        read, zxid = await reader.watch_stamp()
        # Done at once if the connection was lost meanwhile: the dict then subscribes again.
        broken = session.state.wait_for(States.SUSPENDED, States.LOST)
        broken.add_done_callback(lambda _: bell.set())
        notices = _follow(reader, bell, broken, zxid if read is None else read.stat.mzxid)
        yield notices
    finally:
        for kind in _KINDS:
            with contextlib.suppress(KeyError):
                session.remove_watch_callback(kind, tree.root, ring)
        if broken is not None:
            for state in (States.SUSPENDED, States.LOST):
                session.state.futures[state].discard(broken)
            broken.cancel()
        if notices is not None:
            await notices.aclose()


async def _follow(
    reader: Reader, bell: asyncio.Event, broken: asyncio.Future[None], last: int
) -> AsyncGenerator[Delta, None]:
    while True:
        await bell.wait()
        bell.clear()
        if broken.done():
            return
        read, zxid = await reader.watch_stamp()
        if read is None:
            # The dict's node is gone: only a check can say what is left.
            if zxid > last:
                last = zxid
                yield Delta(version=last, complete=False)
            continue
        version = read.stat.mzxid
        if version <= last:
            continue
        delta = await reader.changes_after(last, read)
        if delta is None:
            yield Delta(version=version, complete=False)
            last = version
            continue
        yield delta
        last = delta.version
