"""ZooKeeper: one znode per key, a stamp on the dict's own node, and a short change log.

Layout under the dict's node ``P`` (the keyspace, e.g. ``/app/settings``)::

    P              data: the names the last write changed, joined by "/" ("*": possibly all of
                   them); for a write of one key, "<name>\\n=<value>" (values up to 8 KiB) or
                   "<name>\\n-" (deleted)
                   stat: mzxid = zxid of the last write (the dict's version); version = writes so far
    P/<name>       one node per key; data = the value's bytes
    P/.log/e<seq>  one sequential entry per write, data: the names it changed (or "*"); about the
                   newest 256 are kept (trimmed every 64th write)

Every write is one ``multi`` transaction: the key nodes' operations, a ``set`` of ``P`` (the stamp)
and a new log entry. So one read of ``P`` tells whether anything changed since a version, and when
its write count moved by exactly one, ``P``'s data names the keys (or carries the value). Else the
log's newest entries with a ``czxid`` past the version name them (the log is trusted only back to
its oldest entry, or back to its creation while it was never trimmed; ``P`` and its log are created
together). When it cannot tell, everything is reloaded: the children listed once and their values
read by ``multiRead`` requests (ZooKeeper 3.6+; one ``get`` per key, pipelined, before), many in
flight. Versions are ZooKeeper's zxids, comparable across processes. Writers must go through this
backend (or stamp ``P`` and log the same way) to be seen.

Notices follow ``P`` with one data watch used as a doorbell, rather than one watch per key: every
write rings it, re-reading ``P`` re-arms it, and the steps above yield exactly what changed since the
previous notice (each notice's ``prev`` is the version of the one before). A subscription ends when
aiozk reports the connection suspended or the session lost; the dict then subscribes again (a new
watch on the new session) and asks ``changes_since``.

A key's node name is ``urllib.parse.quote(key, safe="")`` (UTF-8, ``%XX`` for every byte outside
``A-Z a-z 0-9 _ . - ~``) with a leading ``.`` written ``%2E``: so ``/`` and any unicode work, no name
is ``.`` or ``..``, and names starting with ``.`` are the store's own. ``unquote`` reverses it; a
child whose name is not exactly what quoting gives (made by another tool) is not a key and is ignored.

aiozk 0.32 is used through its request primitives: every call has a timeout (a dead connection is
otherwise noticed only by aiozk's heartbeat), ``multi`` results are read op by op (``commit()`` hides
failures), ``set`` always sends an explicit version, no aiozk recipe (they leak tasks and share
state between watchers) is used, and ``close_client`` ends the tasks aiozk's ``close()`` leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

from .._backend import Delta
from .._dict import AsyncDurableDict, V
from .._watcher import first_error
from ..errors import BackendError, ValueTooLargeError

try:
    from aiozk import exc as zkexc
    from aiozk import protocol
    from aiozk.protocol.request import Request
    from aiozk.protocol.response import Response
    from aiozk.states import States
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ZookeeperDict needs aiozk: pip install 'aiodurabledict[zookeeper]'", name=exc.name
    ) from exc

if TYPE_CHECKING:
    from aiozk import ZKClient

__all__ = ["ZookeeperBackend", "ZookeeperDict", "escape_key", "unescape_key"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# jute.maxbuffer's default: the server drops the connection on a larger request (aiozk then hangs
# until its heartbeat notices), so every request is measured before it is sent.
MAX_REQUEST_BYTES = 0xFFFFF
# A key escapes to at most three times its bytes and is written three times per write (node path,
# stamp, log entry): 1 KiB keys leave a value room for all but 16 KiB of the request.
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = MAX_REQUEST_BYTES - 16 * 1024

_LOG = ".log"
_ENTRY = "e"
_ALL = b"*"
# Changed names beyond this size are logged as "*" (readers reload everything) rather than
# doubling a large batch's request.
_PAYLOAD_LIMIT = 32 * 1024
# A value this small also rides in the stamp, so that followers get it with the stamp's read.
_INLINE_LIMIT = 8 * 1024
_LOG_KEEP = 256
_TRIM_EVERY = 64
# Keys per multiRead request: many requests in flight, none with a huge answer.
_READ_CHUNK = 200
_ATTEMPTS = 20
_REMEMBERED = 1024

_OP_GET_DATA = 4
_OP_GET_CHILDREN = 8
_OP_MULTI_READ = 22
_HEADER = struct.Struct("!i?i")
_INT = struct.Struct("!i")
# czxid, mzxid, ctime, mtime, version, cversion, aversion, ephemeralOwner, dataLength, numChildren, pzxid
_STAT = struct.Struct("!qqqqiiiqiiq")


def escape_key(key: str) -> str:
    """The znode name of ``key``: percent-encoded UTF-8, a leading ``.`` encoded too."""
    name = quote(key, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


def unescape_key(name: str) -> str | None:
    """The key a child named ``name`` holds, or ``None`` when it is not a key's node."""
    if not name or name.startswith("."):
        return None
    try:
        key = unquote(name, errors="strict")
    except UnicodeDecodeError:
        return None
    return key if key and escape_key(key) == name else None


class _MultiRead(Request):  # type: ignore[misc]
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


# (data, stat) for a read of data, child names for a read of children, an error code otherwise.
_ReadResult = tuple[bytes | None, tuple[int, ...]] | list[str] | int


class _MultiReadResponse(Response):  # type: ignore[misc]
    """Parses a ``multiRead`` answer with ``struct`` directly: it may hold thousands of values."""

    opcode = _OP_MULTI_READ
    parts = ()

    def __init__(self, results: list[_ReadResult]) -> None:
        super().__init__()
        self.results = results

    @classmethod
    def deserialize(cls, raw: bytes) -> _MultiReadResponse:
        results: list[_ReadResult] = []
        view = memoryview(raw)
        offset = 0
        while True:
            kind, done, _err = _HEADER.unpack_from(raw, offset)
            offset += _HEADER.size
            if done:
                break
            if kind == _OP_GET_DATA:
                (size,) = _INT.unpack_from(raw, offset)
                offset += 4
                data = None
                if size >= 0:
                    data = bytes(view[offset : offset + size])
                    offset += size
                results.append((data, _STAT.unpack_from(raw, offset)))
                offset += _STAT.size
            elif kind == _OP_GET_CHILDREN:
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


_Names = set[str]


class _OpFailed(Exception):
    """One operation of a transaction failed; ``index`` says which."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"operation {index} failed: {type(error).__name__}")
        self.index = index
        self.error = error


def _payload(names: Iterable[str]) -> bytes:
    raw = "/".join(names).encode()
    return _ALL if len(raw) > _PAYLOAD_LIMIT else raw


def _stamp_payload(changes: Mapping[str, bytes | None]) -> bytes:
    """The names, and for a write of one key its small value too (so followers need not fetch it)."""
    if len(changes) == 1:
        ((name, raw),) = changes.items()
        if raw is None:
            return name.encode() + b"\n-"
        if len(raw) <= _INLINE_LIMIT:
            return name.encode() + b"\n=" + raw
    return _payload(changes)


def _names_in(payload: bytes) -> _Names | None:
    """The names a stamp or log entry lists; ``None`` for "possibly all"."""
    if payload == _ALL:
        return None
    return {n for n in payload.partition(b"\n")[0].decode().split("/") if n}


def _inline_in(payload: bytes) -> dict[str, bytes | None]:
    """The value a stamp carries for a write of one key, if it does."""
    name, newline, rest = payload.partition(b"\n")
    if not newline:
        return {}
    return {name.decode(): None if rest == b"-" else rest[1:]}


def _request_size(request: Any) -> int:
    """The bytes a transaction request takes on the wire (length prefix included)."""
    size = 4 + 8 + _HEADER.size
    for op in request.requests:
        size += _HEADER.size + 4 + len(op.path.encode()) + 4
        if isinstance(op, protocol.SetDataRequest | protocol.CreateRequest | protocol.Create2Request):
            size += 4 + len(op.data or b"")
        if isinstance(op, protocol.CreateRequest | protocol.Create2Request):
            size += 4 + sum(12 + len(a.id.scheme.encode()) + len(a.id.id.encode()) for a in op.acl)
    return size


async def _all(calls: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``calls`` concurrently; on the first failure cancel the rest and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as failed:
        raise first_error(failed) from None
    return [task.result() for task in tasks]


class ZookeeperBackend:
    """The ZooKeeper store behind ``ZookeeperDict``; the module docstring describes the layout.

    ``client`` is an ``aiozk.ZKClient``; it is started if it was not, and closed by ``aclose()`` only
    when ``owns_client`` is true. ``request_timeout`` bounds each request to the server.
    """

    dense_versions = False
    max_key_bytes = MAX_KEY_BYTES
    max_value_bytes: int | None = MAX_VALUE_BYTES

    def __init__(
        self, keyspace: str, client: ZKClient, *, owns_client: bool = False, request_timeout: float = 5.0
    ) -> None:
        parts = keyspace.split("/")
        if not keyspace.startswith("/") or not any(parts) or any(p in (".", "..") for p in parts):
            raise ValueError(
                f"the keyspace must be an absolute znode path like /app/settings, not {keyspace!r}"
            )
        if parts[1] == "zookeeper":
            raise ValueError("the keyspace may not lie under /zookeeper, which ZooKeeper reserves")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be positive, not {request_timeout!r}")
        self._client = client
        self._owns_client = owns_client
        self._timeout = request_timeout
        self._path = "/" + "/".join(p for p in parts if p)
        # Full paths (with the client's chroot): raw requests and watch events use them.
        self._root = client.normalize_path(self._path)
        self._log = f"{self._root}/{_LOG}"
        self._closed = False
        # Names believed to exist: a write picks "set" or "create" without asking first.
        self._present: set[str] = set()
        # The stamp's write count at versions seen lately, and what this backend wrote at them
        # (the node's czxid, so that a recreated node's counts are not mistaken for the old ones).
        self._counts: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self._written: OrderedDict[int, dict[str, bytes | None]] = OrderedDict()
        # The log is trimmed beside the writes, never inside one: a write that committed must not
        # be reported failed because the clean-up after it was slow.
        self._trimming: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the client if it is not, and create the dict's node and its log."""
        self._closed = False
        if self._owns_client or not self._client.session.started:
            await self._io(self._client.start())
        await self._ensure_tree()

    async def _ensure_tree(self) -> None:
        path = ""
        for part in self._path.strip("/").split("/")[:-1]:
            path += "/" + part
            await self._create_quietly(self._client.normalize_path(path))
        # The node and its log in one transaction: then the log has recorded every write since
        # the node's first version, and a reader can trust an untrimmed log back to it.
        request = protocol.TransactionRequest()
        request.add(self._create_request(self._root, b""))
        request.add(self._create_request(self._log, b""))
        response = await self._io(self._client.send(request))
        first = response.responses[0]
        if isinstance(first, zkexc.NodeExists):
            await self._create_quietly(self._log)
        elif isinstance(first, Exception):
            raise first

    async def aclose(self) -> None:
        """Stop a log trim under way, and close the client when this backend owns it."""
        if self._closed:
            return
        self._closed = True
        trimming, self._trimming = self._trimming, None
        if trimming is not None:
            trimming.cancel()
            await asyncio.gather(trimming, return_exceptions=True)
        if self._owns_client:
            await close_client(self._client, self._timeout)

    # -- reads ----------------------------------------------------------------------------------

    async def load(self) -> Delta:
        """Every key: the children listed once, their values read by pipelined ``multiRead``."""
        try:
            names, stat = await self._children(self._root)
        except zkexc.NoNode:
            return Delta(version=self._last_zxid(), full=True)
        self._remember(stat)
        values = await self._fetch(n for n in names if not n.startswith("."))
        changes = {key: raw for key, raw in values.items() if raw is not None}
        return Delta(version=stat.last_modified_zxid, changes=changes, full=True)

    async def changes_since(self, version: int) -> Delta:
        """One read of the stamp when nothing changed; the changed keys only when a few did."""
        stamp = await self._stamp()
        if stamp is None:
            return Delta(version=max(version, self._last_zxid()), full=True)
        data, stat = stamp
        if stat.last_modified_zxid <= version:
            return Delta(version=version, prev=version)
        found = await self._changes_after(version, data, stat)
        if found is None:
            return await self.load()
        newest, changes = found
        return Delta(version=newest, changes=changes, prev=version)

    # -- writes ---------------------------------------------------------------------------------

    async def set(self, key: str, value: bytes) -> Delta:
        """Set or create the key's node, whichever the node needs."""
        name = escape_key(key)
        for _ in range(_ATTEMPTS):
            try:
                return await self._commit([self._put(name, value)], {name: value})
            except _OpFailed as failed:
                if failed.index != 0:
                    raise failed.error from None
                self._learn(name, failed.error)
        raise BackendError(f"ZooKeeper: the key's node kept changing type; gave up after {_ATTEMPTS} tries")

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        """``create`` the node: of many callers exactly one succeeds, the others read its value."""
        name = escape_key(key)
        for _ in range(_ATTEMPTS):
            try:
                delta = await self._commit([self._create_request(self._child(name), value)], {name: value})
            except _OpFailed as failed:
                if not isinstance(failed.error, zkexc.NodeExists):
                    raise failed.error from None
            else:
                return delta, value
            current = await self._read(name)
            if current is not None:
                raw, stat = current
                self._present.add(name)
                return Delta(version=stat[1], changes={key: raw}), raw
        raise BackendError(
            f"ZooKeeper: the key kept appearing and vanishing; gave up after {_ATTEMPTS} tries"
        )

    async def pop(self, key: str) -> tuple[Delta, bytes] | None:
        """Read the node, then delete it only if it is still that version."""
        name = escape_key(key)
        for _ in range(_ATTEMPTS):
            current = await self._read(name)
            if current is None:
                self._present.discard(name)
                return None
            raw, stat = current
            delete = protocol.DeleteRequest(path=self._child(name), version=stat[4])
            try:
                return await self._commit([delete], {name: None}), raw
            except _OpFailed as failed:
                if not isinstance(failed.error, zkexc.BadVersion | zkexc.NoNode):
                    raise failed.error from None
        raise BackendError(f"ZooKeeper: the key kept changing; gave up after {_ATTEMPTS} tries")

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        """One ``multi`` transaction for every item: all are written or none."""
        named = {escape_key(key): value for key, value in items.items()}
        order = list(named)
        for _ in range(_ATTEMPTS):
            ops = [self._put(name, named[name]) for name in order]
            try:
                return await self._commit(ops, dict(named))
            except _OpFailed as failed:
                if failed.index >= len(order):
                    raise failed.error from None
                self._learn(order[failed.index], failed.error)
        raise BackendError(f"ZooKeeper: the keys' nodes kept changing; gave up after {_ATTEMPTS} tries")

    async def clear(self) -> Delta:
        """Delete every key's node in one ``multi``, guarded by the stamp's write count.

        More keys than one request can carry are deleted in several transactions, each guarded
        the same way; when another write slips in between, the rest is listed and deleted again.
        """
        removed: set[str] = set()
        for _ in range(_ATTEMPTS):
            try:
                names, stat = await self._children(self._root)
            except zkexc.NoNode:
                return Delta(version=self._last_zxid())
            keys = [n for n in names if unescape_key(n) is not None]
            self._remember(stat)
            # Removed by an earlier try and absent from this listing: absent as of every
            # guarded transaction below.
            changes: dict[str, bytes | None] = dict.fromkeys(removed - set(names))
            if not keys:
                return Delta(version=stat.last_modified_zxid, changes=self._keyed(changes))
            changes.update(dict.fromkeys(keys))
            batches = self._batches([protocol.DeleteRequest(path=self._child(n), version=-1) for n in keys])
            count = stat.version
            prev: int | None = None
            try:
                for i, batch in enumerate(batches):
                    names_in: dict[str, bytes | None] = {self._name_of(op.path): None for op in batch}
                    delta = await self._commit(batch, names_in, stamp_version=count)
                    removed.update(names_in)
                    count = self._counts[delta.version][1]
                    if i == 0:
                        prev = delta.prev
            except _OpFailed as failed:
                if not isinstance(failed.error, zkexc.BadVersion | zkexc.NoNode):
                    raise failed.error from None
                continue
            # Every batch followed the listing without a write between (the stamp's count).
            return Delta(version=delta.version, changes=self._keyed(changes), prev=prev)
        raise BackendError(
            f"ZooKeeper: the dict kept changing during clear(); gave up after {_ATTEMPTS} tries"
        )

    # -- notices --------------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Delta]]:
        """Follow the stamp with a data watch; each notice carries what changed since the last.

        The subscription ends when the client's connection is suspended or its session is lost
        (watches may have been missed): the dict subscribes again and asks ``changes_since``.
        """
        session = self._client.session
        bell = asyncio.Event()

        def ring(_path: str) -> None:
            bell.set()

        kinds = (protocol.WatchEvent.CREATED, protocol.WatchEvent.DELETED, protocol.WatchEvent.DATA_CHANGED)
        for kind in kinds:
            session.add_watch_callback(kind, self._root, ring)
        broken: asyncio.Future[None] | None = None
        notices: AsyncGenerator[Delta, None] | None = None
        try:
            stamp = await self._stamp(watch=True)
            # Done at once if the connection was lost meanwhile: the dict then subscribes again.
            broken = session.state.wait_for(States.SUSPENDED, States.LOST)
            broken.add_done_callback(lambda _: bell.set())
            notices = self._follow(bell, broken, stamp)
            yield notices
        finally:
            for kind in kinds:
                with contextlib.suppress(KeyError):
                    session.remove_watch_callback(kind, self._root, ring)
            if broken is not None:
                for state in (States.SUSPENDED, States.LOST):
                    session.state.futures[state].discard(broken)
                broken.cancel()
            if notices is not None:
                await notices.aclose()

    async def _follow(
        self,
        bell: asyncio.Event,
        broken: asyncio.Future[None],
        stamp: tuple[bytes, Any] | None,
    ) -> AsyncGenerator[Delta, None]:
        last = 0 if stamp is None else int(stamp[1].last_modified_zxid)
        while True:
            await bell.wait()
            bell.clear()
            if broken.done():
                return
            stamp = await self._stamp(watch=True)
            if stamp is None:
                # The dict's node is gone: only a reload can say what is left.
                last = max(last, self._last_zxid())
                yield Delta(version=last, complete=False)
                continue
            data, stat = stamp
            zxid = int(stat.last_modified_zxid)
            if zxid <= last:
                continue
            mine = self._written.get(zxid)
            if mine is not None and self._counts.get(last) == (stat.created_zxid, stat.version - 1):
                yield Delta(version=zxid, changes=self._keyed(mine), prev=last)
                last = zxid
                continue
            found = await self._changes_after(last, data, stat)
            if found is None:
                yield Delta(version=zxid, complete=False)
                last = zxid
                continue
            newest, changes = found
            yield Delta(version=newest, changes=changes, prev=last)
            last = newest

    # -- internals: reading ---------------------------------------------------------------------

    async def _changes_after(
        self, version: int, data: bytes, stat: Any
    ) -> tuple[int, dict[str, bytes | None]] | None:
        """What changed after ``version``, and the version that covers it; ``None``: reload."""
        zxid = int(stat.last_modified_zxid)
        self._remember(stat)
        if self._counts.get(version) == (stat.created_zxid, stat.version - 1):
            # Exactly one write since: the stamp names its keys, or even carries the value.
            inline = _inline_in(data)
            if inline:
                return (zxid, self._keyed(inline))
            listed = _names_in(data)
            return None if listed is None else (zxid, await self._fetch(listed))
        found = await self._logged_after(version)
        if found is None:
            return None
        newest, names = found
        return (newest, await self._fetch(names))

    async def _logged_after(self, version: int) -> tuple[int, _Names] | None:
        """The names the log lists after ``version`` and the newest entry's zxid; ``None``: reload."""
        try:
            children, log_stat = await self._children(self._log)
        except zkexc.NoNode:
            return None
        # Never trimmed and as old as the version: then the log holds every write since.
        whole = log_stat.child_version == len(children) and log_stat.created_zxid <= version
        entries = sorted((e for e in children if e.startswith(_ENTRY)), reverse=True)
        if len(entries) > 4 * _LOG_KEEP:
            # Writers trim; a log this long means they did not (or could not): help, off this path.
            self._trim_later()
        names: _Names = set()
        newest = 0
        batch = 8
        start = 0
        while start < len(entries):
            chunk = entries[start : start + batch]
            results = await self._multi_read([(_OP_GET_DATA, f"{self._log}/{e}") for e in chunk])
            for result in results:
                if not isinstance(result, tuple):
                    # Trimmed while we read: the log no longer reaches back that far.
                    return None
                raw, entry_stat = result
                if entry_stat[0] <= version:
                    return (max(newest, version), names)
                listed = _names_in(raw or b"")
                if listed is None:
                    return None
                names |= listed
                newest = max(newest, entry_stat[0])
            start += batch
            batch *= 4
        return (newest, names) if whole and newest else None

    async def _fetch(self, names: Iterable[str]) -> dict[str, bytes | None]:
        """The values of the nodes ``names`` (``None`` where absent), keyed by key; pipelined."""
        named = [(n, k) for n in names if (k := unescape_key(n)) is not None]
        chunks = [named[i : i + _READ_CHUNK] for i in range(0, len(named), _READ_CHUNK)]
        answers = await _all(
            self._multi_read([(_OP_GET_DATA, self._child(n)) for n, _ in chunk]) for chunk in chunks
        )
        values: dict[str, bytes | None] = {}
        for chunk, results in zip(chunks, answers, strict=True):
            for (name, key), result in zip(chunk, results, strict=True):
                if isinstance(result, tuple):
                    values[key] = result[0] if result[0] is not None else b""
                    self._present.add(name)
                else:
                    values[key] = None
                    self._present.discard(name)
        return values

    async def _read(self, name: str) -> tuple[bytes, tuple[int, ...]] | None:
        (result,) = await self._multi_read([(_OP_GET_DATA, self._child(name))])
        if isinstance(result, tuple):
            return (result[0] or b"", result[1])
        return None

    async def _multi_read(self, ops: Sequence[tuple[int, str]]) -> list[_ReadResult]:
        conn = self._client.session.conn
        if conn is not None and conn.version_info is not None and tuple(conn.version_info) < (3, 6, 0):
            return await self._each_read(ops)
        response = await self._io(self._client.send(_MultiRead(ops)))
        results: list[_ReadResult] = response.results
        for result in results:
            if isinstance(result, int) and result != zkexc.NoNode.error_code:
                raise zkexc.get_response_error(result)
        return results

    async def _each_read(self, ops: Sequence[tuple[int, str]]) -> list[_ReadResult]:
        """What ``multiRead`` answers, from one pipelined ``get`` per op (servers before 3.6)."""

        async def one(path: str) -> _ReadResult:
            try:
                response = await self._client.send(protocol.GetDataRequest(path=path, watch=False))
            except zkexc.NoNode:
                return int(zkexc.NoNode.error_code)
            s = response.stat
            stat = (s.created_zxid, s.last_modified_zxid, s.created, s.modified, s.version, s.child_version)
            return (response.data, stat)

        assert all(opcode == _OP_GET_DATA for opcode, _ in ops)
        async with asyncio.timeout(self._timeout):
            return await _all(one(path) for _, path in ops)

    async def _stamp(self, *, watch: bool = False) -> tuple[bytes, Any] | None:
        """The dict node's data and stat (re-arming the watch), or ``None`` when it is missing."""
        request = protocol.GetDataRequest(path=self._root, watch=watch)
        try:
            response = await self._io(self._client.send(request))
        except zkexc.NoNode:
            if watch:
                # Arm a watch for its creation instead.
                with contextlib.suppress(zkexc.NoNode):
                    await self._io(self._client.send(protocol.ExistsRequest(path=self._root, watch=True)))
            return None
        self._remember(response.stat)
        return (response.data or b"", response.stat)

    async def _children(self, path: str) -> tuple[list[str], Any]:
        response = await self._io(self._client.send(protocol.GetChildren2Request(path=path, watch=False)))
        return list(response.children), response.stat

    # -- internals: writing ---------------------------------------------------------------------

    async def _commit(
        self,
        ops: list[Any],
        changes: dict[str, bytes | None],
        *,
        stamp_version: int = -1,
    ) -> Delta:
        """Send ``ops`` with the stamp and a log entry as one transaction; the delta it committed.

        Raises ``_OpFailed`` naming the first of ``ops`` that failed; recreates the dict's node or
        log when they are missing and tries again.
        """
        payload = _payload(changes)
        stamp_payload = _stamp_payload(changes)
        for attempt in range(2):
            request = protocol.TransactionRequest()
            for op in ops:
                request.add(op)
            request.add(protocol.SetDataRequest(path=self._root, data=stamp_payload, version=stamp_version))
            request.add(self._create_request(f"{self._log}/{_ENTRY}", payload, sequential=True))
            size = _request_size(request)
            if size > MAX_REQUEST_BYTES:
                raise ValueTooLargeError(
                    f"the write would be a {size}-byte request; ZooKeeper accepts {MAX_REQUEST_BYTES} (jute.maxbuffer)"
                )
            response = await self._io(self._client.send(request))
            failed = [
                (i, r)
                for i, r in enumerate(response.responses)
                if isinstance(r, Exception)
                and not isinstance(r, zkexc.RolledBack | zkexc.RuntimeInconsistency)
            ]
            if not failed:
                break
            index, error = failed[0]
            creates = isinstance(request.requests[index], protocol.CreateRequest | protocol.Create2Request)
            if attempt == 0 and isinstance(error, zkexc.NoNode) and (creates or index == len(ops)):
                # The dict's node or its log was deleted under us: make them again, once.
                await self._ensure_tree()
                continue
            raise _OpFailed(index, error)
        stamp = response.responses[len(ops)].stat
        zxid, count = int(stamp.last_modified_zxid), int(stamp.version)
        before = (stamp.created_zxid, count - 1)
        prev = next((z for z, c in reversed(self._counts.items()) if c == before), None)
        self._remember(stamp)
        for name, raw in changes.items():
            if raw is None:
                self._present.discard(name)
            else:
                self._present.add(name)
        self._written[zxid] = changes
        while len(self._written) > 16:
            self._written.popitem(last=False)
        seq = int(response.responses[-1].path[-10:])
        if seq >= _LOG_KEEP and seq % _TRIM_EVERY == 0:
            self._trim_later()
        return Delta(version=zxid, changes=self._keyed(changes), prev=prev)

    def _put(self, name: str, value: bytes) -> Any:
        if name in self._present:
            return protocol.SetDataRequest(path=self._child(name), data=value, version=-1)
        return self._create_request(self._child(name), value)

    def _learn(self, name: str, error: BaseException) -> None:
        """Correct what we believed of a node from the error a write got; re-raise anything else."""
        if isinstance(error, zkexc.NoNode):
            self._present.discard(name)
        elif isinstance(error, zkexc.NodeExists):
            self._present.add(name)
        else:
            raise error

    def _create_request(self, path: str, data: bytes, *, sequential: bool = False) -> Any:
        features = self._client.features
        cls = protocol.Create2Request if features.create_with_stat else protocol.CreateRequest
        request = cls(path=path, data=data, acl=self._client.default_acl)
        request.set_flags(False, sequential, False)
        return request

    async def _create_quietly(self, path: str) -> None:
        request = self._create_request(path, b"")
        with contextlib.suppress(zkexc.NodeExists):
            await self._io(self._client.send(request))

    def _batches(self, ops: list[Any]) -> list[list[Any]]:
        """Split ``ops`` into transactions that each fit in one request with stamp and log entry."""
        budget = MAX_REQUEST_BYTES - 2 * len(_ALL) - 2 * len(self._root) - 4096
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

    def _trim_later(self) -> None:
        """Start a best-effort trim of the log unless one is under way or the backend is closed."""
        if not self._closed and (self._trimming is None or self._trimming.done()):
            self._trimming = asyncio.get_running_loop().create_task(self._trim_quietly())

    async def _trim_quietly(self) -> None:
        """Drop the log's oldest entries; best effort, it never fails the write that asked."""
        try:
            entries, _ = await self._children(self._log)
            await self._trim(sorted((e for e in entries if e.startswith(_ENTRY)), reverse=True))
        except Exception as exc:  # noqa: BLE001 - best effort, in the background: log and move on
            log.debug("trimming the change log failed: %s", type(exc).__name__)

    async def _trim(self, newest_first: list[str]) -> None:
        old = newest_first[_LOG_KEEP:]
        if not old:
            return
        for batch in self._batches(
            [protocol.DeleteRequest(path=f"{self._log}/{e}", version=-1) for e in old]
        ):
            request = protocol.TransactionRequest()
            for op in batch:
                request.add(op)
            # A concurrent trim makes one delete fail and the whole batch roll back: fine.
            await self._io(self._client.send(request))

    # -- internals: small helpers ---------------------------------------------------------------

    async def _io(self, call: Any) -> Any:
        """Await one aiozk call under the request timeout (aiozk itself may wait forever)."""
        async with asyncio.timeout(self._timeout):
            return await call

    def _child(self, name: str) -> str:
        return f"{self._root}/{name}"

    def _name_of(self, path: str) -> str:
        return path.rpartition("/")[2]

    def _keyed(self, changes: Mapping[str, bytes | None]) -> dict[str, bytes | None]:
        return {key: raw for name, raw in changes.items() if (key := unescape_key(name)) is not None}

    def _remember(self, stat: Any) -> None:
        """Note the stamp's write count at its version (from any stat of the dict's node)."""
        counts = self._counts
        zxid = int(stat.last_modified_zxid)
        counts[zxid] = (int(stat.created_zxid), int(stat.version))
        counts.move_to_end(zxid)
        while len(counts) > _REMEMBERED:
            counts.popitem(last=False)

    def _last_zxid(self) -> int:
        return int(self._client.session.last_zxid or 0)


async def close_client(client: ZKClient, timeout: float) -> None:
    """Close an aiozk client and leave none of its tasks or timers behind, even when the server is gone.

    aiozk's ``close()`` waits for a connected session to say goodbye and, when that fails, returns
    with its heartbeat timer, repair loop and reader still scheduled.
    """
    session = client.session
    try:
        async with asyncio.timeout(timeout):
            await client.close()
    except (zkexc.ZKError, TimeoutError, OSError) as exc:
        log.debug("closing the ZooKeeper session failed: %s", type(exc).__name__)
    else:
        if not session.started:
            return
    tasks: list[asyncio.Task[Any]] = []
    if session.heartbeat_handle is not None:
        session.heartbeat_handle.cancel()
        session.heartbeat_handle = None
    for task in (session.heartbeat_task, session.repair_loop_task):
        if task is not None and not task.done():
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


class ZookeeperDict(AsyncDurableDict[V]):
    """A dict kept in ZooKeeper: ``ZookeeperDict("/app/settings", aiozk.ZKClient("127.0.0.1:2181"))``.

    Options are the dict's (``codec``, ``autosync``, ``watch``, ...) plus the backend's
    ``owns_client`` and ``request_timeout`` (see ``ZookeeperBackend``). The client is the caller's
    and stays open, unless ``owns_client=True``.
    """

    def __init__(
        self,
        keyspace: str,
        connection: ZKClient,
        *,
        owns_client: bool = False,
        request_timeout: float = 5.0,
        **opts: Any,
    ) -> None:
        backend = ZookeeperBackend(
            keyspace, connection, owns_client=owns_client, request_timeout=request_timeout
        )
        super().__init__(backend, **opts)
