"""``ZookeeperBackend``: the ``Backend`` protocol over one znode, and ``ZookeeperDict`` on top of it.

The backend's own work is the lifecycle (hardening the client, authenticating, refusing a dict nested
in another, creating the node) and mapping aiozk's errors to ``BackendError``; the reads, writes and
notices live in their own modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from aiozk import exc as zkexc

from ..._backend import Delta
from ..._dict import AsyncDurableDict, V
from ..._types import DictOptions
from ...errors import BackendError, map_exceptions
from . import _aiozk
from ._aiozk import OP_GET_DATA
from .auth import Credentials
from .layout import LOG, MAX_KEY_BYTES, MAX_VALUE_BYTES, escape_key
from .notices import subscribe
from .reads import Reader
from .tree import Tree
from .writes import Writer

if TYPE_CHECKING:
    from aiozk import ZKClient

__all__ = ["ZookeeperBackend", "ZookeeperDict"]

T = TypeVar("T")

_FAILED = "ZooKeeper failed"


@contextmanager
def _edge(timeout: float) -> Iterator[None]:
    """aiozk's errors, by name, and a request past ``request_timeout``, as ``BackendError`` (the
    native error is the cause)."""
    try:
        with map_exceptions(zkexc.ZKError, message=_FAILED):
            yield
    except TimeoutError as exc:
        raise BackendError(f"ZooKeeper did not answer within {timeout:g} s (request_timeout)") from exc


def _check_keyspace(keyspace: str) -> str:
    parts = keyspace.split("/")
    if not keyspace.startswith("/") or not any(parts) or any(p in (".", "..") for p in parts):
        raise ValueError(f"the keyspace must be an absolute znode path like /app/settings, not {keyspace!r}")
    if parts[1] == "zookeeper":
        raise ValueError("the keyspace may not lie under /zookeeper, which ZooKeeper reserves")
    return "/" + "/".join(p for p in parts if p)


class ZookeeperBackend:
    """The ZooKeeper store behind ``ZookeeperDict``: one znode per key under ``keyspace``.

    ``client`` is an ``aiozk.ZKClient``; it is started if it was not, and closed by ``aclose()`` only
    when ``owns_client`` is true. ``request_timeout`` bounds each request to the server.
    ``credentials`` (a digest ``(user, password)``) authenticate the client on every connection it
    makes; the nodes the dict creates then get ``acl`` (default: every right for that user and
    nobody else; without credentials, the client's ``default_acl``). ``log_keep`` is how many
    entries of the change log are kept: a reader further behind than that reloads everything.
    Starting it installs, on the client, the fixes of ``_aiozk.harden`` (a lost connection is
    noticed at once and another server found within a second).
    """

    max_key_bytes = MAX_KEY_BYTES
    max_value_bytes: int | None = MAX_VALUE_BYTES
    poll_interval: float | None = None

    def __init__(
        self,
        keyspace: str,
        client: ZKClient,
        *,
        owns_client: bool = False,
        request_timeout: float = 5.0,
        credentials: Credentials | tuple[str, str] | None = None,
        acl: Sequence[Any] | None = None,
        log_keep: int = 256,
    ) -> None:
        path = _check_keyspace(keyspace)
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be positive, not {request_timeout!r}")
        if log_keep < 1:
            raise ValueError(f"log_keep must be at least 1, not {log_keep!r}")
        self.credentials = Credentials.of(credentials) if credentials is not None else None
        if acl is None:
            acl = self.credentials.acl() if self.credentials is not None else client.default_acl
        self._client = client
        self._owns_client = owns_client
        self._timeout = request_timeout
        self._tree = Tree(client, path, timeout=request_timeout, acl=acl)
        self._reader = Reader(self._tree)
        self._writer = Writer(self._tree, self._reader, log_keep=log_keep)
        self._closed = False

    @property
    def path(self) -> str:
        """The dict's znode."""
        return self._tree.path

    @property
    def client(self) -> ZKClient:
        """The aiozk client this backend uses."""
        return self._client

    def __repr__(self) -> str:
        servers = ",".join(f"{host}:{port}" for host, port in self._client.session.hosts)
        user = f"{self.credentials.user}:***@" if self.credentials is not None else ""
        return f"ZookeeperBackend('zookeeper://{user}{servers}{self._tree.root}')"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Harden and start the client, authenticate it, and create the dict's node and its log.

        Raises ``ValueError`` when the keyspace lies inside another dict (its node would be one of
        that dict's keys).
        """
        await self._mapped(self._start())

    async def _start(self) -> None:
        self._closed = False
        self._writer.closed = False
        client = self._client
        _aiozk.harden(client)
        if self.credentials is not None:
            await _aiozk.add_auth(client, self.credentials.scheme, self.credentials.auth)
        if self._owns_client or not client.session.started:
            async with asyncio.timeout(self._timeout):
                await client.start()
        await _aiozk.learn_mode(client, self._timeout)
        await self._refuse_nesting()
        await self._writer.ensure_tree()

    async def _refuse_nesting(self) -> None:
        tree = self._tree
        ancestors: list[str] = []
        path = ""
        for part in tree.path.strip("/").split("/")[:-1]:
            path += "/" + part
            ancestors.append(path)
        if not ancestors:
            return
        normalize = self._client.normalize_path
        _, results = await tree.read([(OP_GET_DATA, f"{normalize(a)}/{LOG}") for a in ancestors])
        outer = next((a for a, r in zip(ancestors, results, strict=True) if isinstance(r, tuple)), None)
        if outer is not None:
            raise ValueError(
                f"the keyspace {tree.path!r} lies inside the dict at {outer!r} (its node would be "
                "one of that dict's keys); dicts do not nest: choose a path beside it"
            )

    async def aclose(self) -> None:
        """Stop a log trim under way, and close the client when this backend owns it."""
        if self._closed:
            return
        self._closed = True
        await self._writer.aclose()
        if self._owns_client:
            await _aiozk.close_client(self._client, self._timeout)

    # -- the protocol ---------------------------------------------------------------------------

    async def _mapped(self, call: Awaitable[T]) -> T:
        with _edge(self._timeout):
            return await call

    async def load(self) -> Delta:
        return await self._mapped(self._reader.load())

    async def changes_since(self, version: int) -> Delta:
        return await self._mapped(self._reader.changes_since(version))

    async def set(self, key: str, value: bytes) -> Delta:
        return await self._mapped(self._writer.set(key, value))

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        return await self._mapped(self._writer.pop(key))

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        return await self._mapped(self._writer.setdefault(key, value))

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        return await self._mapped(self._writer.update(items))

    async def clear(self) -> Delta:
        return await self._mapped(self._writer.clear())

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        return await self._mapped(self._writer.compare_and_set(key, expected, new))

    async def read(self, key: str) -> Delta:
        """One key as the store holds it, with the version and token (one request, after a sync)."""
        found = await self._mapped(self._reader.key(escape_key(key)))
        if found.nested:
            return Delta(found.delta.version, {key: None}, token=found.delta.token)
        return found.delta

    async def drop(self) -> None:
        """Delete the dict's keys, its log and its node."""
        await self._mapped(self._writer.drop())

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Delta]]:
        """Follow the dict's node with a data watch (see ``notices``)."""
        with _edge(self._timeout):
            async with subscribe(self._reader) as notices:
                yield _mapped_notices(notices, self._timeout)


async def _mapped_notices(notices: AsyncIterator[Delta], timeout: float) -> AsyncIterator[Delta]:
    with _edge(timeout):
        async for notice in notices:
            yield notice


class ZookeeperDict(AsyncDurableDict[V]):
    """A dict kept in ZooKeeper: ``ZookeeperDict("/app/settings", aiozk.ZKClient("127.0.0.1:2181"))``.

    Options are the dict's (``codec``, ``autosync``, ``watch``, ...) plus the backend's
    ``owns_client``, ``request_timeout``, ``credentials``, ``acl`` and ``log_keep`` (see
    ``ZookeeperBackend``). The client is the caller's and stays open, unless ``owns_client=True``.
    """

    def __init__(
        self,
        keyspace: str,
        connection: ZKClient,
        *,
        owns_client: bool = False,
        request_timeout: float = 5.0,
        credentials: Credentials | tuple[str, str] | None = None,
        acl: Sequence[Any] | None = None,
        log_keep: int = 256,
        **opts: Unpack[DictOptions],
    ) -> None:
        backend = ZookeeperBackend(
            keyspace,
            connection,
            owns_client=owns_client,
            request_timeout=request_timeout,
            credentials=credentials,
            acl=acl,
            log_keep=log_keep,
        )
        super().__init__(backend, **opts)
