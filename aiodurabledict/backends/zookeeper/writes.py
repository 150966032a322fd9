"""Writing the dict: every write is one ``multi`` transaction of the key nodes' operations, a ``set``
of the stamp and a new log entry, so that readers learn of it from one read of the stamp.

A write that depends on what it read (``pop``, ``setdefault``, ``compare_and_set``, ``clear``)
guards its operations with the versions it read; when another writer got in between, ``retrying``
reads and tries again. A write is never sent twice: when the connection breaks under it, the caller
learns that it may have committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiozk import exc as zkexc
from aiozk import protocol

from ..._backend import Delta, new_token
from ...errors import BackendError, InvalidKeyError, ValueTooLargeError
from ._aiozk import OP_GET_CHILDREN, request_size
from .layout import (
    ALL,
    ENTRY,
    LOG,
    MAX_REQUEST_BYTES,
    encode_entry,
    encode_stamp,
    entry_order,
    escape_key,
    unescape_key,
)
from .reads import Reader
from .tree import Conflict, Tree, stat_of

__all__ = ["UNKNOWN_PREV", "Writer", "retrying"]

T = TypeVar("T")

log = logging.getLogger("aiodurabledict.zookeeper")

#: ``prev`` of a commit whose predecessor is not known (another writer got in between): a version
#: no cache holds, so the dict asks the store what came before.
UNKNOWN_PREV = -1
_ATTEMPTS = 20


class _OpFailed(Exception):
    """One operation of a transaction failed; ``index`` says which."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"operation {index} failed: {type(error).__name__}")
        self.index = index
        self.error = error


async def retrying(attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``attempt`` until it does not raise ``Conflict`` (bounded)."""
    for _ in range(_ATTEMPTS):
        try:
            return await attempt()
        except Conflict:
            continue
    raise BackendError(f"ZooKeeper: {what} kept changing; gave up after {_ATTEMPTS} tries")


def _nested(key: str) -> InvalidKeyError:
    return InvalidKeyError(
        f"the node of key {key!r} holds another dict nested in this one; it cannot be written"
    )


class Writer:
    """The writes of one dict's node; ``log_keep`` bounds its change log."""

    def __init__(self, tree: Tree, reader: Reader, *, log_keep: int) -> None:
        self.tree = tree
        self.reader = reader
        self.log_keep = log_keep
        self.trim_every = max(1, log_keep // 4)
        # The log is trimmed beside the writes, never inside one: a write that committed must not
        # be reported failed because the clean-up after it was slow.
        self._trimming: asyncio.Task[None] | None = None
        self.closed = False

    # -- the writes ----------------------------------------------------------------------------

    async def set(self, key: str, value: bytes) -> Delta:
        """Set or create the key's node, whichever the node needs."""
        name = escape_key(key)

        async def attempt() -> Delta:
            try:
                return await self.commit([self.tree.put(name, value)], {name: value})
            except _OpFailed as failed:
                if failed.index != 0:
                    raise failed.error from None
                await self._learn(key, name, failed)
                raise Conflict from None

        return await retrying(attempt, "the key's node")

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        """One transaction for every item: all are written or none."""
        named = {escape_key(key): (key, value) for key, value in items.items()}
        order = list(named)

        async def attempt() -> Delta:
            ops = [self.tree.put(name, named[name][1]) for name in order]
            try:
                return await self.commit(ops, {name: value for name, (_, value) in named.items()})
            except _OpFailed as failed:
                if failed.index >= len(order):
                    raise failed.error from None
                name = order[failed.index]
                await self._learn(named[name][0], name, failed)
                raise Conflict from None

        return await retrying(attempt, "the keys' nodes")

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        """``create`` the node: of many callers exactly one succeeds, the others read its value."""
        name = escape_key(key)

        async def attempt() -> tuple[Delta, bytes]:
            try:
                delta = await self.commit([self.tree.create(self.tree.child(name), value)], {name: value})
            except _OpFailed as failed:
                if not isinstance(failed.error, zkexc.NodeExists):
                    raise failed.error from None
            else:
                return delta, value
            found = await self.reader.key(name)
            if found.nested:
                raise _nested(key)
            if found.value is None:
                raise Conflict
            return found.delta, found.value

        return await retrying(attempt, "the key")

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        """Read the node, then delete it only if it is still that version."""
        name = escape_key(key)

        async def attempt() -> tuple[Delta, bytes | None]:
            found = await self.reader.key(name)
            if found.value is None:
                return found.delta, None
            if found.nested:
                raise _nested(key)
            delete = protocol.DeleteRequest(path=self.tree.child(name), version=found.node_version)
            try:
                return await self.commit([delete], {name: None}), found.value
            except _OpFailed as failed:
                if isinstance(failed.error, zkexc.BadVersion | zkexc.NoNode):
                    raise Conflict from None
                raise failed.error from None

        return await retrying(attempt, "the key")

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        """Read the node; when it holds ``expected``, write ``new`` guarded by the version read."""
        name = escape_key(key)
        tree = self.tree

        async def attempt() -> tuple[Delta, bool]:
            found = await self.reader.key(name)
            if found.nested:
                raise _nested(key)
            if found.value != expected:
                return found.delta, False
            if new is None and found.value is None:
                return found.delta, True
            op: Any
            if found.value is None:
                op = tree.create(tree.child(name), new or b"")
            elif new is None:
                op = protocol.DeleteRequest(path=tree.child(name), version=found.node_version)
            else:
                op = protocol.SetDataRequest(path=tree.child(name), data=new, version=found.node_version)
            try:
                return await self.commit([op], {name: new}), True
            except _OpFailed as failed:
                if isinstance(failed.error, zkexc.BadVersion | zkexc.NoNode | zkexc.NodeExists):
                    raise Conflict from None
                raise failed.error from None

        return await retrying(attempt, "the key")

    async def clear(self) -> Delta:
        """Delete every key's node in one transaction, guarded by the stamp's write count.

        More keys than one request can carry are deleted in several transactions, each guarded
        the same way; when another write slips in between, the rest is listed and deleted again.
        """
        tree = self.tree
        removed: set[str] = set()
        nested: set[str] = set()

        async def attempt() -> Delta:
            read, zxid, names = await self.reader.listing(tries=1)
            if read is None:
                return Delta(version=zxid, changes=tree.keyed(dict.fromkeys(removed)))
            keys = [n for n in names if unescape_key(n) is not None and n not in nested]
            # Removed by an earlier try and absent from this listing: absent as of every
            # guarded transaction below.
            changes: dict[str, bytes | None] = dict.fromkeys(removed - set(names))
            if not keys:
                return Delta(version=read.stat.mzxid, changes=tree.keyed(changes), token=read.stamp.token)
            changes.update(dict.fromkeys(keys))
            count = read.stat.version
            first_delta: Delta | None = None
            delta: Delta | None = None
            for batch in self._batches(
                [protocol.DeleteRequest(path=tree.child(n), version=-1) for n in keys]
            ):
                batch_names: dict[str, bytes | None] = {tree.name_of(op.path): None for op in batch}
                try:
                    delta = await self.commit(batch, batch_names, guard=count)
                except _OpFailed as failed:
                    if isinstance(failed.error, zkexc.NotEmpty) and failed.index < len(batch):
                        # Another dict nested under this one: not a key, leave it.
                        nested.add(tree.name_of(batch[failed.index].path))
                    elif not isinstance(failed.error, zkexc.BadVersion | zkexc.NoNode):
                        raise failed.error from None
                    raise Conflict from None
                removed.update(batch_names)
                count += 1
                first_delta = first_delta or delta
            assert delta is not None
            assert first_delta is not None
            # Every batch followed the listing without a write between (the stamp's count).
            return Delta(
                version=delta.version,
                changes=tree.keyed(changes),
                prev=first_delta.prev,
                token=delta.token,
                prev_token=first_delta.prev_token,
            )

        return await retrying(attempt, "the dict")

    async def _learn(self, key: str, name: str, failed: _OpFailed) -> None:
        """Correct what we believed of a key's node from the error a write got; raise anything else."""
        error = failed.error
        if isinstance(error, zkexc.NoNode):
            self.tree.present.discard(name)
        elif isinstance(error, zkexc.NodeExists):
            # Another process made it. A node with children is another dict, never to be overwritten.
            found = await self.reader.key(name)
            if found.nested:
                raise _nested(key)
            self.tree.present.add(name)
        else:
            raise error

    # -- the transaction -----------------------------------------------------------------------

    async def commit(self, ops: list[Any], changes: dict[str, bytes | None], *, guard: int = -1) -> Delta:
        """Send ``ops`` with the stamp and a log entry as one transaction; the delta it committed.

        ``guard``: the stamp's write count the transaction requires (-1: any). Raises ``_OpFailed``
        naming the first operation that failed; recreates the dict's node or log when they are
        missing and tries again.
        """
        tree = self.tree
        token = new_token()
        entry = encode_entry(token, changes)
        claimed: list[Any] = [None]

        def build() -> Any:
            # On the connection it goes out on: the commit before it, as seen on that connection.
            before = claimed[0] = tree.last_commit()
            request = protocol.TransactionRequest()
            for op in ops:
                request.add(op)
            stamp = encode_stamp(token, before, changes)
            request.add(protocol.SetDataRequest(path=tree.root, data=stamp, version=guard))
            request.add(tree.create(tree.entry(ENTRY), entry, sequential=True))
            return request

        size = request_size(build())
        if size > MAX_REQUEST_BYTES:
            raise ValueTooLargeError(
                f"the write would be a {size}-byte request; ZooKeeper accepts {MAX_REQUEST_BYTES} (jute.maxbuffer)"
            )
        for attempt in range(2):
            _, response = await tree.send_built(build)
            failed = [
                (i, r)
                for i, r in enumerate(response.responses)
                if isinstance(r, Exception)
                and not isinstance(r, zkexc.RolledBack | zkexc.RuntimeInconsistency)
            ]
            if not failed:
                break
            index, error = failed[0]
            missing_tree = isinstance(error, zkexc.NoNode) and index >= len(ops)
            creates = index < len(ops) and isinstance(
                ops[index], protocol.CreateRequest | protocol.Create2Request
            )
            if attempt == 0 and isinstance(error, zkexc.NoNode) and (creates or missing_tree):
                # The dict's node or its log was deleted under us: make them again, once.
                await self.ensure_tree()
                continue
            raise _OpFailed(index, error)
        stat = stat_of(response.responses[len(ops)].stat)
        before = claimed[0]
        tree.remember(stat, token)
        tree.wrote(stat.mzxid, token, changes)
        for name, raw in changes.items():
            if raw is None:
                tree.present.discard(name)
            else:
                tree.present.add(name)
        seq = entry_order(tree.name_of(response.responses[-1].path))
        if seq >= self.log_keep and seq % self.trim_every == 0:
            self._trim_later()
        if tree.follows(stat, before):
            assert before is not None
            prev, prev_token = before.zxid, before.token
        else:
            prev, prev_token = UNKNOWN_PREV, None
        return Delta(stat.mzxid, tree.keyed(changes), prev=prev, token=token, prev_token=prev_token)

    # -- the tree ------------------------------------------------------------------------------

    async def ensure_tree(self) -> None:
        """Create the dict's node and its log (and the parents they need) where missing."""
        tree = self.tree
        path = ""
        for part in tree.path.strip("/").split("/")[:-1]:
            path += "/" + part
            await self._create_quietly(tree.client.normalize_path(path), tree.client.default_acl)
        # The node and its log in one transaction: then the log has recorded every write since
        # the node's first version, and a reader can trust an untrimmed log back to it.
        request = protocol.TransactionRequest()
        request.add(tree.create(tree.root, b""))
        request.add(tree.create(tree.log, b""))
        _, response = await tree.send(request)
        first = response.responses[0]
        if isinstance(first, zkexc.NodeExists):
            await self._create_quietly(tree.log, tree.acl)
        elif isinstance(first, Exception):
            raise first

    async def _create_quietly(self, path: str, acl: list[Any]) -> None:
        with contextlib.suppress(zkexc.NodeExists):
            await self.tree.send(self.tree.create(path, b"", acl=acl))

    def _batches(self, ops: list[Any]) -> list[list[Any]]:
        """Split ``ops`` into transactions that each fit in one request with stamp and log entry."""
        budget = MAX_REQUEST_BYTES - 2 * len(ALL) - 2 * len(self.tree.root) - 4096
        batches: list[list[Any]] = [[]]
        used = 0
        for op in ops:
            size = len(op.path.encode()) + 64
            if batches[-1] and used + size > budget:
                batches.append([])
                used = 0
            batches[-1].append(op)
            used += size
        return batches

    async def drop(self) -> None:
        """Delete the dict's keys, its log and its node: the tree as if the dict was never written.

        Writes that slip in meanwhile are deleted too (a few rounds); a node inside that is not the
        dict's (another dict nested in it) stops it with ``BackendError``.
        """
        tree = self.tree
        for _ in range(_DROP_ROUNDS):
            _, (names, entries) = await tree.read([(OP_GET_CHILDREN, tree.root), (OP_GET_CHILDREN, tree.log)])
            ops = [protocol.DeleteRequest(path=tree.entry(e), version=-1) for e in _listed(entries)]
            ops += [
                protocol.DeleteRequest(path=tree.child(n), version=-1) for n in _listed(names) if n != LOG
            ]
            for batch in self._batches(ops):
                await self._all_or_missing(batch)
            if await self._all_or_missing(
                [
                    protocol.DeleteRequest(path=tree.log, version=-1),
                    protocol.DeleteRequest(path=tree.root, version=-1),
                ]
            ):
                self.tree.present.clear()
                return
        raise BackendError(f"ZooKeeper: the node {tree.path!r} kept getting new children; not dropped")

    async def _all_or_missing(self, ops: list[Any]) -> bool:
        """Delete ``ops`` in one transaction, nodes already gone skipped; ``False`` when a node was
        not empty (something was written inside it meanwhile)."""
        request = protocol.TransactionRequest()
        for op in ops:
            request.add(op)
        _, response = await self.tree.send(request)
        failed = [r for r in response.responses if isinstance(r, zkexc.NoNode | zkexc.NotEmpty)]
        if any(isinstance(r, zkexc.NotEmpty) for r in failed):
            return False
        if failed:
            # A node already gone rolled the others back: delete them one by one.
            for op in ops:
                with contextlib.suppress(zkexc.NoNode):
                    one = protocol.TransactionRequest()
                    one.add(op)
                    _, answer = await self.tree.send(one)
                    if any(isinstance(r, zkexc.NotEmpty) for r in answer.responses):
                        return False
        return True

    # -- trimming the log ----------------------------------------------------------------------

    def _trim_later(self) -> None:
        """Start a best-effort trim of the log unless one is under way or the backend is closed."""
        if not self.closed and (self._trimming is None or self._trimming.done()):
            self._trimming = asyncio.get_running_loop().create_task(self._trim_quietly())

    async def _trim_quietly(self) -> None:
        """Drop the log's oldest entries; best effort, it never fails the write that asked."""
        tree = self.tree
        try:
            _, (entries,) = await tree.read([(OP_GET_CHILDREN, tree.log)])
            if not isinstance(entries, list):
                return
            old = sorted((e for e in entries if entry_order(e) >= 0), key=entry_order, reverse=True)[
                self.log_keep :
            ]
            for batch in self._batches([protocol.DeleteRequest(path=tree.entry(e), version=-1) for e in old]):
                request = protocol.TransactionRequest()
                for op in batch:
                    request.add(op)
                # A concurrent trim makes one delete fail and the whole batch roll back: fine.
                await tree.send(request)
        except (zkexc.ZKError, TimeoutError, OSError) as exc:
            log.debug("trimming the change log failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        """Stop a log trim under way."""
        self.closed = True
        trimming, self._trimming = self._trimming, None
        if trimming is not None:
            trimming.cancel()
            await asyncio.gather(trimming, return_exceptions=True)


_DROP_ROUNDS = 5


def _listed(result: Any) -> list[str]:
    """The child names a read of children found (none when the node is missing)."""
    return list(result) if isinstance(result, list) else []
