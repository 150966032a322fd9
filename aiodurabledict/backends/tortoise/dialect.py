"""What every SQL dialect shares: the reads and writes of one dict, written once over a few statements
and a session that each dialect (``sqlite``, ``postgres``, ``mysql``) provides.

The version row of a dict is raised by one in the same transaction as every write, which also logs
each changed key; a cache catches up in one query (the log since its version joined with the current
values). The first statement of every write locks the version row, so writers from any number of
processes serialise and ``setdefault`` has one winner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..._backend import Delta
from ...errors import BackendError, EncodeError
from .columns import Columns

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["Dialect", "NothingWritten", "Session", "Statements"]


class Session(Protocol):
    """One driver connection, as the dict uses it; statements take ``$n`` parameters."""

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]: ...

    async def execute(self, sql: str, args: Sequence[Any]) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


class Statements:
    """The SQL of one dict, with ``$n`` parameters. Where the table holds many dicts, the keyspace
    is always the last parameter. Each dialect fills in its own."""

    ensure_version: str
    load: str
    since: str
    bump: str
    upsert: str
    get: str
    log: str
    trim: str
    horizon: str


class NothingWritten(Exception):
    """Raised inside a write transaction to roll it back: the write turned out to change nothing."""


class Dialect(ABC):
    """One SQL database's way of keeping a dict: statements, sessions, preparation, key checks and
    the writes. ``errors`` are the driver's exceptions, reported as ``BackendError``."""

    kind: ClassVar[str]
    errors: ClassVar[tuple[type[BaseException], ...]]

    def __init__(self, cols: Columns, name: str, keyspace: str | None, log_keep: int) -> None:
        self.cols = cols
        self.name = name
        self.keyspace = keyspace
        self.log_keep = log_keep
        self.trim_every = max(1, min(100, log_keep // 4))

    # -- what each dialect provides ----------------------------------------------------------------

    @property
    @abstractmethod
    def sql(self) -> Statements:
        """The statements (on MySQL known only after ``prepare``)."""

    @abstractmethod
    def session(
        self, client: BaseDBAsyncClient, *, write: bool = False
    ) -> AbstractAsyncContextManager[Session]:
        """A driver connection; with ``write``, inside a transaction that commits when the block ends."""

    @abstractmethod
    async def prepare(self, client: BaseDBAsyncClient) -> None:
        """Create the library's tables when missing, check the columns, make the dict's version row."""

    @abstractmethod
    def location(self, client: BaseDBAsyncClient) -> str:
        """Where the database is, as the client reaches it."""

    def check_key(self, key: str) -> None:
        """Raise ``InvalidKeyError`` for a key this database cannot keep apart from others."""
        return

    def check_text(self, key: str, text: str) -> None:
        """Raise ``EncodeError`` for a text value this database cannot store."""
        return

    async def announce(self, s: Session, version: int, changes: Mapping[str, bytes | None]) -> None:
        """Tell listeners about a commit, inside its transaction (only PostgreSQL can)."""
        return

    async def bump(self, s: Session) -> int | None:
        """Raise the version and return it; ``None`` when the version row is missing."""
        rows = await s.fetch(self.sql.bump, [self.name])
        return int(rows[0][0]) if rows else None

    @abstractmethod
    async def take(self, s: Session, key: str) -> Any:
        """Delete ``key``'s row under the write lock; the value it held, ``None`` when absent."""

    @abstractmethod
    async def take_all(self, s: Session) -> list[Sequence[Any]]:
        """Delete every row of the dict; ``(key, value)`` of each."""

    @abstractmethod
    async def insert_new(self, s: Session, key: str, stored: Any) -> Any:
        """Insert ``key`` unless it holds a value; ``None`` when inserted, else the value it holds."""

    # -- shared helpers ----------------------------------------------------------------------------

    def scope(self, *args: Any) -> list[Any]:
        """Statement arguments: ``args``, then the keyspace where the table holds many dicts."""
        return [*args, self.keyspace] if self.keyspace is not None else list(args)

    def stored(self, key: str, value: bytes | None = None) -> Any:
        """Check a key (and convert a value) for the column types; nothing is escaped."""
        self.check_key(key)
        if value is None or self.cols.binary:
            return value
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise EncodeError(
                f"the value for key {key!r} is not UTF-8 text, and the value column is text "
                "(use a BinaryField value column for binary values)"
            ) from None
        self.check_text(key, text)
        return text

    def _missing(self) -> BackendError:
        return BackendError(f"the version row of dict {self.name!r} is missing")

    # -- reads -------------------------------------------------------------------------------------

    async def load(self, client: BaseDBAsyncClient) -> Delta:
        """Every entry and the version, read by one statement (one snapshot)."""
        async with self.session(client) as s:
            rows = await s.fetch(self.sql.load, self.scope(self.name))
        if not rows:
            raise self._missing()
        out = self.cols.out
        changes = {row[1]: out(row[2]) for row in rows if row[1] is not None and row[2] is not None}
        return Delta(version=int(rows[0][0]), changes=changes, full=True)

    async def since(self, client: BaseDBAsyncClient, version: int) -> tuple[int, Delta | None]:
        """The database's version and what changed after ``version`` in one query; ``None`` for the
        delta when only a full load can tell (``version`` older than the log, or newer than the store)."""
        async with self.session(client) as s:
            rows = await s.fetch(self.sql.since, self.scope(self.name, version))
        if not rows:
            raise self._missing()
        current, horizon = int(rows[0][0]), int(rows[0][1])
        if version == current:
            return current, Delta(version=current, prev=current)
        if version > current or version < horizon:
            return current, None
        out = self.cols.out
        changes = {row[2]: (None if row[3] is None else out(row[3])) for row in rows if row[2] is not None}
        return current, Delta(version=current, changes=changes, prev=version)

    # -- writes ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self, client: BaseDBAsyncClient) -> AsyncIterator[tuple[Session, int]]:
        """A write transaction that has locked the dict and taken the next version."""
        async with self.session(client, write=True) as s:
            version = await self.bump(s)
            if version is None:
                raise self._missing()
            if self.trim_due(version):
                await self.trim(s, version)
            yield s, version

    def trim_due(self, version: int) -> bool:
        return version % self.trim_every == 0 and version > self.log_keep

    async def trim(self, s: Session, version: int) -> None:
        """Forget the log up to ``version - log_keep``; the horizon moves first, so that a reader
        never takes a log with holes for a whole one."""
        horizon = version - self.log_keep
        await s.execute(self.sql.horizon, [self.name, horizon])
        await s.execute(self.sql.trim, [self.name, horizon])

    async def _log(self, s: Session, version: int, changes: Mapping[str, bytes | None]) -> None:
        await s.executemany(self.sql.log, [[self.name, version, key] for key in changes])
        await self.announce(s, version, changes)

    async def set(self, client: BaseDBAsyncClient, key: str, value: bytes) -> Delta:
        """Upsert one row."""
        stored = self.stored(key, value)
        async with self._writing(client) as (s, version):
            await s.execute(self.sql.upsert, self.scope(key, stored))
            await self._log(s, version, {key: value})
        return Delta(version=version, changes={key: value}, prev=version - 1)

    async def update(self, client: BaseDBAsyncClient, items: Mapping[str, bytes]) -> Delta:
        """Upsert every row in one transaction."""
        rows = [self.scope(key, self.stored(key, value)) for key, value in items.items()]
        async with self._writing(client) as (s, version):
            await s.executemany(self.sql.upsert, rows)
            await self._log(s, version, items)
        return Delta(version=version, changes=dict(items), prev=version - 1)

    async def pop(self, client: BaseDBAsyncClient, key: str) -> tuple[Delta, bytes] | None:
        """Delete one row and return its value; ``None`` (nothing committed) when it is absent."""
        self.stored(key)
        try:
            async with self._writing(client) as (s, version):
                old = await self.take(s, key)
                if old is None:
                    raise NothingWritten
                await self._log(s, version, {key: None})
        except NothingWritten:
            return None
        return Delta(version=version, changes={key: None}, prev=version - 1), self.cols.out(old)

    async def setdefault(self, client: BaseDBAsyncClient, key: str, value: bytes) -> tuple[Delta, bytes]:
        """Insert the row unless the key is present; exactly one of concurrent callers writes."""
        stored = self.stored(key, value)
        existing: Any = None
        try:
            async with self._writing(client) as (s, version):
                existing = await self.insert_new(s, key, stored)
                if existing is not None:
                    raise NothingWritten
                await self._log(s, version, {key: value})
        except NothingWritten:
            # Read under the lock: this is the value as of version - 1.
            current = self.cols.out(existing)
            return Delta(version=version - 1, changes={key: current}), current
        return Delta(version=version, changes={key: value}, prev=version - 1), value

    async def clear(self, client: BaseDBAsyncClient) -> Delta:
        """Delete every row of the dict in one transaction."""
        try:
            async with self._writing(client) as (s, version):
                rows = await self.take_all(s)
                if not rows:
                    raise NothingWritten
                removed: dict[str, bytes | None] = {row[0]: None for row in rows if row[1] is not None}
                await self._log(s, version, {row[0]: None for row in rows})
        except NothingWritten:
            # Nothing to remove, and we held the lock: the dict was empty at version - 1.
            return Delta(version=version - 1, full=True)
        return Delta(version=version, changes=removed, prev=version - 1)
