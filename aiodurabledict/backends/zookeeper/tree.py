"""The dict's node on one client: its paths, the ACL of what it makes, requests bounded in time, and
what this process knows of the node (the last commit it saw, the names it believes exist).

Reads and writes share one ``Tree``: a write names the commit before it (the last one seen on the
same connection) in its stamp, and every stamp read or written updates that memory.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from aiozk import exc as zkexc
from aiozk import protocol

from . import _aiozk
from .layout import LOG, Commit, Stamp, unescape_key

if TYPE_CHECKING:
    from aiozk import ZKClient

__all__ = ["Conflict", "NodeStat", "StampRead", "Tree", "stat_of"]


class Conflict(Exception):
    """Another writer got in between a read and the write that depended on it: try again."""


# Commits this process wrote lately, so that its own notices need no fetch.
_WRITTEN = 16


class NodeStat(NamedTuple):
    """The parts of a znode's stat we use."""

    czxid: int
    mzxid: int
    version: int
    cversion: int
    children: int


def stat_of(stat: Any) -> NodeStat:
    """A ``NodeStat`` from aiozk's ``Stat`` or from a ``multiRead`` stat tuple."""
    if isinstance(stat, tuple):
        return NodeStat(stat[0], stat[1], stat[4], stat[5], stat[9])
    return NodeStat(
        int(stat.created_zxid),
        int(stat.last_modified_zxid),
        int(stat.version),
        int(stat.child_version),
        int(stat.num_children),
    )


class StampRead(NamedTuple):
    """The dict's node as one read found it."""

    stat: NodeStat
    stamp: Stamp


class _Seen(NamedTuple):
    conn: Any
    czxid: int
    commit: Commit


class Tree:
    """Paths, requests and memory of one dict's node on one client.

    ``timeout`` bounds every request (aiozk itself may wait forever); ``acl`` is given to every
    node the dict creates.
    """

    def __init__(self, client: ZKClient, path: str, *, timeout: float, acl: Sequence[Any]) -> None:
        self.client = client
        self.path = path
        self.timeout = timeout
        self.acl = list(acl)
        # Full paths (with the client's chroot): raw requests and watch events use them.
        self.root = client.normalize_path(path)
        self.log = f"{self.root}/{LOG}"
        #: Names believed to exist: a write picks "set" or "create" without asking first.
        self.present: set[str] = set()
        self._seen: _Seen | None = None
        self._written: OrderedDict[int, tuple[str, dict[str, bytes | None]]] = OrderedDict()

    # -- paths ---------------------------------------------------------------------------------

    def child(self, name: str) -> str:
        return f"{self.root}/{name}"

    def entry(self, name: str) -> str:
        return f"{self.log}/{name}"

    @staticmethod
    def name_of(path: str) -> str:
        return path.rpartition("/")[2]

    # -- requests ------------------------------------------------------------------------------

    async def send(self, request: Any, *, resend: bool = False) -> tuple[int, Any]:
        """One request under the timeout: its reply's zxid and response."""
        async with asyncio.timeout(self.timeout):
            return await _aiozk.request(self.client, request, resend=resend)

    async def send_built(self, build: Callable[[], Any]) -> tuple[int, Any]:
        """A write built once connected, right before it goes out on that connection (its stamp
        names the commit before it, which must have been seen on the same connection)."""
        async with asyncio.timeout(self.timeout):
            return await _aiozk.request(self.client, build)

    async def read(
        self, ops: Sequence[tuple[int, str]], *, sync: bool = False
    ) -> tuple[int, list[_aiozk.ReadResult]]:
        """Many reads in one request under the timeout (after a ``sync`` when asked). Missing nodes
        and nodes we may not read come back as their error codes; any other error is raised."""
        async with asyncio.timeout(self.timeout):
            zxid, results = await _aiozk.read_many(self.client, ops, sync=self.root if sync else None)
        for result in results:
            if isinstance(result, int) and result not in _READ_CODES:
                raise zkexc.get_response_error(result)
        return zxid, results

    def create(
        self, path: str, data: bytes, *, sequential: bool = False, acl: Sequence[Any] | None = None
    ) -> Any:
        """A create request (with stat where the server knows it) of a persistent node of the dict,
        with the dict's ACL unless ``acl`` is given."""
        cls = protocol.Create2Request if self.client.features.create_with_stat else protocol.CreateRequest
        request = cls(path=path, data=data, acl=list(self.acl if acl is None else acl))
        request.set_flags(False, sequential, False)
        return request

    def put(self, name: str, value: bytes) -> Any:
        """Set or create a key's node, whichever we believe it needs."""
        if name in self.present:
            return protocol.SetDataRequest(path=self.child(name), data=value, version=-1)
        return self.create(self.child(name), value)

    # -- memory --------------------------------------------------------------------------------

    def remember(self, stat: NodeStat, token: str | None) -> None:
        """Note the dict node's commit as a read or a write found it (on the current connection)."""
        conn = self.client.session.conn
        seen = self._seen
        if seen is None or seen.conn is not conn or seen.czxid != stat.czxid or seen.commit.zxid < stat.mzxid:
            self._seen = _Seen(conn, stat.czxid, Commit(stat.version, stat.mzxid, token))

    def last_commit(self) -> Commit | None:
        """The newest commit seen on the current connection (a new connection may reach a server
        restored from a backup: what was seen before says nothing about its history)."""
        seen = self._seen
        if seen is None or seen.conn is not self.client.session.conn:
            return None
        return seen.commit

    def follows(self, stat: NodeStat, before: Commit | None) -> bool:
        """Whether ``before`` is the commit right before the one ``stat`` shows."""
        return before is not None and before.count == stat.version - 1 and before.zxid >= stat.czxid

    def wrote(self, zxid: int, token: str, changes: Mapping[str, bytes | None]) -> None:
        self._written[zxid] = (token, dict(changes))
        while len(self._written) > _WRITTEN:
            self._written.popitem(last=False)

    def written(self, zxid: int, token: str | None) -> dict[str, bytes | None] | None:
        """What this process wrote at ``zxid`` with ``token``, keyed by key, if it did."""
        found = self._written.get(zxid)
        if found is None or found[0] != token:
            return None
        return self.keyed(found[1])

    @staticmethod
    def keyed(changes: Mapping[str, bytes | None]) -> dict[str, bytes | None]:
        """``changes`` by key instead of node name (names that are not keys left out)."""
        return {key: raw for name, raw in changes.items() if (key := unescape_key(name)) is not None}


_READ_CODES = frozenset({zkexc.NoNode.error_code, zkexc.NoAuth.error_code})
