"""Reading the dict: the whole of it, what changed since a version, and one key with its version.

The stamp tells in one read whether anything changed since a version. When its write count moved by
exactly one and its writer named the commit before it, that commit is the version asked for and the
stamp names the keys (or carries the value). Otherwise the log's newest entries with a ``czxid``
past the version name them, and the entry at the version gives its token; the log is trusted only
back to its oldest entry, or back to its creation while it was never trimmed (the node and its log
are created together). When it cannot tell, everything is reloaded: the children listed once and
their values read by ``multiRead`` requests, many in flight.

The reads of a check go after a ``sync``, in the same round trip: a client connected to a follower
that lags behind its leader would otherwise miss a commit that completed elsewhere (a standalone
server holds every commit: no sync is sent there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiozk import exc as zkexc
from aiozk import protocol

from ..._backend import Delta
from ..._watcher import first_error
from ._aiozk import OP_GET_CHILDREN, OP_GET_DATA, ReadResult
from .layout import entry_order, parse_entry, parse_stamp, unescape_key
from .tree import Conflict, NodeStat, StampRead, Tree, stat_of

__all__ = ["NO_COMMIT", "KeyRead", "Reader"]

log = logging.getLogger("aiodurabledict.zookeeper")

#: The token of a version at which the store holds no commit: it matches no cache's token.
NO_COMMIT = "(no commit at this version)"
# Keys per multiRead request: many requests in flight, none with a huge answer.
READ_CHUNK = 200
# Tries to read the stamp, the children and the stamp again with no write in between.
_CONSISTENT_TRIES = 5


@dataclass(frozen=True, slots=True)
class KeyRead:
    """One key as the store held it at ``delta.version`` (a reading), with its node's version."""

    delta: Delta
    value: bytes | None
    node_version: int
    nested: bool


class Reader:
    """The reads of one dict's node; every stamp read is remembered by the tree."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._unreadable: frozenset[str] = frozenset()

    # -- the stamp -----------------------------------------------------------------------------

    def stamp_of(self, result: ReadResult) -> StampRead | None:
        """The stamp a read of the dict's node found (remembered), ``None`` when it is missing."""
        if not isinstance(result, tuple):
            if result == zkexc.NoAuth.error_code:
                raise zkexc.NoAuth()
            return None
        data, raw_stat = result
        read = StampRead(stat_of(raw_stat), parse_stamp(data))
        self.tree.remember(read.stat, read.stamp.token)
        return read

    async def stamp(self, *, sync: bool) -> tuple[StampRead | None, int]:
        """The dict's node now, and the zxid the server answered at."""
        zxid, (result,) = await self.tree.read([(OP_GET_DATA, self.tree.root)], sync=sync)
        return self.stamp_of(result), zxid

    async def watch_stamp(self) -> tuple[StampRead | None, int]:
        """The dict's node, arming a watch on it (for its creation when it is missing)."""
        tree = self.tree
        try:
            zxid, response = await tree.send(protocol.GetDataRequest(path=tree.root, watch=True), resend=True)
        except zkexc.NoNode:
            with contextlib.suppress(zkexc.NoNode):
                await tree.send(protocol.ExistsRequest(path=tree.root, watch=True), resend=True)
            return await self.stamp(sync=False)
        read = StampRead(stat_of(response.stat), parse_stamp(response.data))
        tree.remember(read.stat, read.stamp.token)
        return read, zxid

    # -- everything ----------------------------------------------------------------------------

    async def load(self) -> Delta:
        """Every key at the stamp's version: the children listed once, their values read by
        pipelined ``multiRead`` requests."""
        read, zxid, names = await self.listing()
        if read is None:
            return Delta(version=zxid, full=True)
        values = await self.fetch(n for n in names if not n.startswith("."))
        changes = {key: raw for key, raw in values.items() if raw is not None}
        return Delta(version=read.stat.mzxid, changes=changes, full=True, token=read.stamp.token)

    async def listing(self, *, tries: int = _CONSISTENT_TRIES) -> tuple[StampRead | None, int, list[str]]:
        """The stamp and the dict node's children as of one version (after a ``sync``), and the
        zxid the server answered at; ``None`` and no names when the node is missing.

        The stamp is read before and after the children in one request: no write came between when
        both agree. Raises ``Conflict`` when writes kept coming between for ``tries`` reads.
        """
        tree = self.tree
        for attempt in range(tries):
            zxid, (first, children, second) = await tree.read(
                [(OP_GET_DATA, tree.root), (OP_GET_CHILDREN, tree.root), (OP_GET_DATA, tree.root)],
                sync=attempt == 0,
            )
            if children == zkexc.NoAuth.error_code:
                raise zkexc.NoAuth()
            read, before = self.stamp_of(second), self.stamp_of(first)
            if read is None and before is None:
                return None, zxid, []
            if read is not None and before is not None and before.stat == read.stat:
                assert isinstance(children, list)
                return read, zxid, children
        raise Conflict("the dict kept changing while its keys were listed")

    # -- what changed --------------------------------------------------------------------------

    async def changes_since(self, version: int) -> Delta:
        """One read of the stamp when nothing changed; the changed keys only when a few did."""
        read, zxid = await self.stamp(sync=True)
        if read is None:
            # The dict's node is gone (deleted by another tool): the dict is empty.
            return Delta(version=max(version, zxid), full=True)
        stat, stamp = read
        if stat.mzxid == version:
            return Delta(version=version, prev=version, token=stamp.token, prev_token=stamp.token)
        if stat.mzxid > version:
            delta = await self.changes_after(version, read)
            if delta is not None:
                return delta
        # Older than the version asked (the store went back in time), or past what we can tell.
        return await self.load()

    async def changes_after(self, version: int, read: StampRead) -> Delta | None:
        """The range from ``version`` up to the stamp ``read`` (or later); ``None``: reload."""
        stat, stamp = read
        tree = self.tree
        before = stamp.before
        if tree.follows(stat, before) and before is not None and before.zxid == version:
            # Exactly one write since: the stamp names its keys, or even carries the value.
            changes = tree.written(stat.mzxid, stamp.token)
            if changes is None and stamp.inline is not None:
                changes = tree.keyed(stamp.inline)
            if changes is None:
                if stamp.names is None:
                    return None
                changes = await self.fetch(stamp.names)
            return Delta(
                version=stat.mzxid, changes=changes, prev=version, token=stamp.token, prev_token=before.token
            )
        found = await self._logged_after(version, stat)
        if found is None:
            return None
        names, prev_token, newest, token = found
        if newest < stat.mzxid:
            # The stamp was written after the newest entry (by another tool): it is the version.
            newest, token = stat.mzxid, stamp.token
        changes = await self.fetch(names)
        return Delta(version=newest, changes=changes, prev=version, token=token, prev_token=prev_token)

    async def _logged_after(
        self, version: int, stat: NodeStat
    ) -> tuple[set[str], str | None, int, str | None] | None:
        """The names the log lists after ``version``, the token at ``version`` and the newest
        entry's zxid and token; ``None``: the log cannot tell (reload)."""
        tree = self.tree
        _, (listing, log_node) = await tree.read([(OP_GET_CHILDREN, tree.log), (OP_GET_DATA, tree.log)])
        if not isinstance(listing, list) or not isinstance(log_node, tuple):
            return None
        log_stat = stat_of(log_node[1])
        entries = sorted((e for e in listing if entry_order(e) >= 0), key=entry_order, reverse=True)
        names: set[str] = set()
        newest, newest_token = 0, None
        batch, start = 8, 0
        while start < len(entries):
            chunk = entries[start : start + batch]
            _, results = await tree.read([(OP_GET_DATA, tree.entry(e)) for e in chunk])
            for result in results:
                if not isinstance(result, tuple):
                    # Trimmed while we read: the log no longer reaches back that far.
                    return None
                raw, entry_stat = result
                czxid = entry_stat[0]
                entry = parse_entry(raw)
                if czxid > version:
                    if entry.names is None:
                        return None
                    names |= entry.names
                    if czxid > newest:
                        newest, newest_token = czxid, entry.token
                    continue
                # The first entry at or below the version: the commit at it, or none.
                token = entry.token if czxid == version else self._no_commit(version, log_stat)
                return names, token, max(newest, version), newest_token
            start += batch
            batch *= 4
        # Never trimmed and as old as the version: the log holds every write since.
        whole = log_stat.cversion == len(listing) and log_stat.czxid <= version
        if not whole:
            return None
        return names, self._no_commit(version, log_stat), max(newest, version), newest_token

    @staticmethod
    def _no_commit(version: int, log_stat: NodeStat) -> str | None:
        # The node and its log are created in one transaction: at that version the dict is empty,
        # with no token. Any other version without an entry is none of this store's commits.
        return None if version == log_stat.czxid else NO_COMMIT

    # -- values --------------------------------------------------------------------------------

    async def fetch(self, names: Iterable[str]) -> dict[str, bytes | None]:
        """The values of the key nodes ``names`` (``None`` where absent), keyed by key; pipelined.

        A node we may not read is left out (logged once), as is one with children: that is another
        dict nested under this one, not a key.
        """
        tree = self.tree
        named = [(n, k) for n in names if (k := unescape_key(n)) is not None]
        chunks = [named[i : i + READ_CHUNK] for i in range(0, len(named), READ_CHUNK)]
        answers = await _all(tree.read([(OP_GET_DATA, tree.child(n)) for n, _ in chunk]) for chunk in chunks)
        values: dict[str, bytes | None] = {}
        unreadable: set[str] = set()
        for chunk, (_, results) in zip(chunks, answers, strict=True):
            for (name, key), result in zip(chunk, results, strict=True):
                if isinstance(result, tuple):
                    if stat_of(result[1]).children:
                        continue
                    values[key] = result[0] if result[0] is not None else b""
                    tree.present.add(name)
                elif result == zkexc.NoAuth.error_code:
                    unreadable.add(key)
                else:
                    values[key] = None
                    tree.present.discard(name)
        self._report(unreadable)
        return values

    def _report(self, unreadable: set[str]) -> None:
        new = unreadable - self._unreadable
        if new:
            self._unreadable |= new
            shown = ", ".join(repr(k) for k in sorted(new)[:5]) + (", ..." if len(new) > 5 else "")
            log.warning(
                "%d key node(s) under %s may not be read by this client (their ACL); left out: %s",
                len(new),
                self.tree.path,
                shown,
            )

    async def key(self, name: str) -> KeyRead:
        """One key as the store holds it, and the version and token it holds it at (a reading).

        The stamp is read before and after the key in the same request: when both agree, no write
        came between. Raises ``Conflict`` when writes kept coming between.
        """
        tree = self.tree
        key = unescape_key(name)
        assert key is not None
        for attempt in range(_CONSISTENT_TRIES):
            zxid, (first, node, second) = await tree.read(
                [(OP_GET_DATA, tree.root), (OP_GET_DATA, tree.child(name)), (OP_GET_DATA, tree.root)],
                sync=attempt == 0,
            )
            if node == zkexc.NoAuth.error_code:
                raise zkexc.NoAuth()
            read = self.stamp_of(second)
            before = self.stamp_of(first)
            if read is None or before is None:
                if read is None and before is None and not isinstance(node, tuple):
                    return KeyRead(Delta(version=zxid, changes={key: None}), None, -1, nested=False)
                continue
            if before.stat != read.stat:
                continue
            if isinstance(node, tuple):
                raw, raw_stat = node
                node_stat = stat_of(raw_stat)
                value = raw if raw is not None else b""
                if node_stat.children:
                    tree.present.discard(name)
                else:
                    tree.present.add(name)
                delta = Delta(version=read.stat.mzxid, changes={key: value}, token=read.stamp.token)
                return KeyRead(delta, value, node_stat.version, nested=node_stat.children > 0)
            tree.present.discard(name)
            delta = Delta(version=read.stat.mzxid, changes={key: None}, token=read.stamp.token)
            return KeyRead(delta, None, -1, nested=False)
        raise Conflict(f"the dict kept changing while {name!r} was read")


async def _all(calls: Iterable[Any]) -> list[Any]:
    """Run ``calls`` concurrently; on the first failure cancel the rest and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as failed:
        raise first_error(failed) from None
    return [task.result() for task in tasks]
