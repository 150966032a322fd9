"""The ``Backend`` of a dict in a SQL table: the dialect does the SQL, the marker saves polls their
query, and on PostgreSQL ``PostgresBackend`` also follows the commits' NOTIFY.

The dialect is decided when the backend is built (the database's kind is known without I/O), and so
is push: ``PostgresBackend`` has ``subscribe()``; SQLite and MySQL are polled.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, cast

from ..._backend import Delta
from ..._types import DEFAULT_KEYSPACE
from ...errors import BackendError, map_exceptions
from .columns import Columns
from .connection import AppDatabase, Database
from .dialect import dialect_for
from .listener import listen
from .marker import Mark, Marker, Seen
from .notices import BadNoticeError, Complaints, read

if TYPE_CHECKING:
    import aiomcache
    from tortoise.backends.base.client import BaseDBAsyncClient
    from tortoise.context import TortoiseContext
    from tortoise.models import Model

    from .dialect import Dialect, Identity
    from .postgres import PostgresDialect

__all__ = ["PostgresBackend", "TortoiseBackend"]


class TortoiseBackend:
    """The store side of ``ModelDict``: one dict in one table of a database Tortoise connects to.

    Options: ``name`` (the dict's row in the version table; default: the table name, plus
    ``/keyspace``), ``cache`` (an ``aiomcache.Client`` for the version marker), ``cache_timeout``
    (seconds per memcached call), ``confirm_interval`` (seconds after which a check asks the
    database even though the marker says nothing changed: the net under a writer that died between
    its commit and the marker, or could not reach memcached), ``poll_interval``, ``log_keep``
    (versions of log kept), ``marker_key`` (default: named after the store's identity), ``connection`` (the Tortoise connection name; default: the model's),
    ``context`` (the Tortoise context; default: the one current now) and ``database`` (a database
    the dict opens itself, as ``open_dict`` URLs make).

    This class polls; build it with ``for_model()`` to get ``PostgresBackend`` on PostgreSQL.
    """

    def __init__(
        self,
        model: type[Model],
        *,
        key_col: str = "key",
        value_col: str = "value",
        keyspace: str | None = None,
        keyspace_col: str | None = None,
        name: str | None = None,
        cache: aiomcache.Client | None = None,
        cache_timeout: float = 0.25,
        confirm_interval: float = 10.0,
        poll_interval: float = 1.0,
        log_keep: int = 1000,
        marker_key: str | None = None,
        connection: str | None = None,
        context: TortoiseContext | None = None,
        database: Database | None = None,
    ) -> None:
        if keyspace_col is None and keyspace is not None:
            keyspace_col = "keyspace"
        if keyspace_col is not None and keyspace is None:
            keyspace = DEFAULT_KEYSPACE
        if keyspace is not None and not keyspace:
            raise ValueError("keyspace must not be empty")
        if log_keep < 1:
            raise ValueError("log_keep must be at least 1")
        if marker_key is not None and not re.fullmatch(r"[!-~]{1,250}", marker_key):
            raise ValueError("marker_key must be 1 to 250 printable ASCII characters without spaces")
        cols = Columns(model, key_col, value_col, keyspace_col)
        self._name = name or (cols.table + (f"/{keyspace}" if keyspace is not None else ""))
        if len(self._name) > 255:
            raise ValueError("the dict's name is longer than 255 characters")
        self._database: Database = (
            database if database is not None else AppDatabase(model, context, connection)
        )
        self._dialect = dialect_for(self._database.kind)(cols, self._name, keyspace, log_keep)
        self.max_key_bytes: int = cols.max_key_bytes
        self.max_value_bytes: int | None = cols.max_value_bytes
        self.poll_interval = poll_interval
        self._cache = cache
        self._cache_timeout = cache_timeout
        self._confirm_interval = confirm_interval
        self._marker_key = marker_key
        self._marker: Marker | None = None
        # The latest commit this backend learnt of from the database (or a signed notice).
        self._known = Mark(-1, None)
        # A commit whose mark memcached did not take: the next call marks the latest one instead.
        self._owed = False
        self._confirm_due = 0.0
        self._identity: Identity | None = None

    @staticmethod
    def for_model(
        model: type[Model],
        *,
        connection: str | None = None,
        context: TortoiseContext | None = None,
        database: Database | None = None,
        **options: Any,
    ) -> TortoiseBackend:
        """The backend for ``model``'s database: ``PostgresBackend`` on PostgreSQL (it pushes),
        ``TortoiseBackend`` elsewhere (polled). Takes the options of ``TortoiseBackend``."""
        if database is None:
            database = AppDatabase(model, context, connection)
        chosen = PostgresBackend if dialect_for(database.kind).pushes else TortoiseBackend
        return chosen(model, database=database, **options)

    @property
    def kind(self) -> str:
        """The kind of database: ``sqlite``, ``postgres`` or ``mysql``."""
        return self._dialect.kind

    @property
    def name(self) -> str:
        """The dict's row in the version table."""
        return self._name

    @property
    def database(self) -> Database:
        """Where the table is reached."""
        return self._database

    @property
    def dialect(self) -> Dialect:
        """The SQL of this dict's database."""
        return self._dialect

    @property
    def identity(self) -> Identity | None:
        """The store's identity from the dict's version row, once started."""
        return self._identity

    @property
    def marker(self) -> Marker | None:
        """The memcached marker, once started with a ``cache``."""
        return self._marker

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind} dict {self._name!r} via {self._database!r})"

    @contextmanager
    def _errors(self, message: str = "the database failed") -> Iterator[None]:
        with map_exceptions(*self._dialect.errors, message=message):
            yield

    def client(self) -> BaseDBAsyncClient:
        """The Tortoise client the dict's statements run on."""
        return self._database.client()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the library's tables if missing (adding what an older release's tables lack), and
        this dict's version row; learn the store's identity.

        On failure the dict calls ``aclose()``, which releases what was made.
        """
        with self._errors("cannot prepare the database"):
            await self._database.open()
            identity = await self._dialect.prepare(self.client())
        if self._cache is not None:
            key = self._marker_key or f"aiodurabledict:{identity.store}"
            self._marker = Marker(self._cache, key.encode(), self._cache_timeout)
        self._identity = identity

    async def aclose(self) -> None:
        """Close the connections the dict opened itself (``open_dict`` URLs, the marker's reads);
        never the application's."""
        if self._marker is not None:
            self._marker.close()
        async with self._dialect.closing():
            await self._database.aclose()

    # -- reads -----------------------------------------------------------------------------------

    async def load(self) -> Delta:
        """Every entry, the version and its token, read by one statement (one snapshot)."""
        with self._errors():
            delta = await self._dialect.load(self.client())
        self._known = Mark(delta.version, delta.token)
        return delta

    async def changes_since(self, version: int) -> Delta:
        """What changed after ``version``: one memcached read when the marker names the commit at
        ``version`` this backend last learnt of, otherwise one query (two when ``version`` is older
        than the log's horizon, or newer than the store)."""
        marker = self._marker
        seen: Seen | None = None
        if marker is not None:
            await self._pay_debt(marker)
            seen = await marker.read()
            known = self._known
            if (
                seen is not None
                and seen.mark is not None
                and seen.mark == known
                and known.version == version
                and time.monotonic() < self._confirm_due
            ):
                return Delta(version, prev=version, token=known.token, prev_token=known.token)
            if seen is not None:
                seen = await marker.claim(seen)
        with self._errors():
            current, token, delta = await self._dialect.since(self.client(), version)
        self._known = truth = Mark(current, token)
        if marker is not None:
            self._confirm_due = time.monotonic() + self._confirm_interval
            if seen is not None:
                await marker.repair(truth, seen)
        return delta if delta is not None else await self.load()

    async def read(self, key: str) -> Delta:
        """One key as the store holds it now, with the version and token."""
        with self._errors():
            return await self._dialect.read(self.client(), key)

    async def drop(self) -> None:
        """Delete the dict's rows, its change log and its version row, and forget the marker.

        Dicts still open on it then fail to find its version row (``BackendError``) until opened again.
        """
        async with self._writing() as client:
            await self._dialect.drop(client)
        if self._marker is not None:
            await self._marker.forget()

    # -- writes ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[BaseDBAsyncClient]:
        """The client for one write. A write cut short may still have committed (its reply lost): it
        drops the marker, so that readers ask the database."""
        try:
            with self._errors():
                yield self.client()
        except (BackendError, OSError, TimeoutError, asyncio.CancelledError):
            if self._marker is not None:
                await self._marker.forget()
            raise

    async def _answered(self, delta: Delta) -> Delta:
        """Learn what a write found or committed; mark a commit before the write returns."""
        self._known = Mark(delta.version, delta.token)
        marker = self._marker
        if marker is not None and delta.prev is not None:
            await self._pay_debt(marker)
            if not await marker.raise_to(self._known):
                self._owed = True
        return delta

    async def _pay_debt(self, marker: Marker) -> None:
        if self._owed and await marker.raise_to(self._known):
            self._owed = False

    async def set(self, key: str, value: bytes) -> Delta:
        """Store ``value`` under ``key``."""
        async with self._writing() as client:
            delta = await self._dialect.set(client, key, value)
        return await self._answered(delta)

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        """Store every item in one transaction."""
        async with self._writing() as client:
            delta = await self._dialect.update(client, items)
        return await self._answered(delta)

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        """Delete one row; the commit and the value it held, or a reading when it is absent."""
        async with self._writing() as client:
            delta, old = await self._dialect.pop(client, key)
        return await self._answered(delta), old

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        """Insert the row unless the key is present; exactly one of concurrent callers writes."""
        async with self._writing() as client:
            delta, stored = await self._dialect.setdefault(client, key, value)
        return await self._answered(delta), stored

    async def clear(self) -> Delta:
        """Delete every row of the dict in one transaction."""
        async with self._writing() as client:
            delta = await self._dialect.clear(client)
        return await self._answered(delta)

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        """Store ``new`` (``None``: remove) if the stored value is ``expected`` (``None``: absent),
        atomically (under the dict's lock)."""
        async with self._writing() as client:
            delta, swapped = await self._dialect.compare_and_set(client, key, expected, new)
        return await self._answered(delta), swapped


class PostgresBackend(TortoiseBackend):
    """A dict on PostgreSQL: polled as a safety net, and followed live through each commit's NOTIFY.

    Notices are believed only when signed with the secret in the dict's version row; any other
    payload on the channel is ignored with a warning (at most one a minute, never quoting it).
    """

    def __init__(self, model: type[Model], **options: Any) -> None:
        super().__init__(model, **options)
        if not self._dialect.pushes:
            raise ValueError(f"PostgresBackend needs a PostgreSQL database, not {self.kind}")
        self._complaints = Complaints(f"{self!r}: ignoring a NOTIFY on the dict's channel")

    @property
    def ignored_notices(self) -> int:
        """Payloads heard on the dict's channel that were not its signed notices."""
        return self._complaints.count

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Delta]]:
        """LISTEN on the dict's channel; its signed notices arrive as deltas."""
        dialect = cast("PostgresDialect", self._dialect)
        async with listen(self.client(), dialect.channel) as payloads:
            yield self._notices(payloads, dialect.secret)

    async def _notices(self, payloads: AsyncIterator[str], secret: bytes) -> AsyncIterator[Delta]:
        async for payload in payloads:
            try:
                delta = read(secret, payload)
            except BadNoticeError as exc:
                self._complaints.note(str(exc))
                continue
            if delta.version > self._known.version:
                self._known = Mark(delta.version, delta.token)
            yield delta
