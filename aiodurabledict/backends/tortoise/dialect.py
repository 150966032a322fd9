"""What every SQL dialect shares: the reads and writes of one dict, written once over a few statements
and a session that each dialect (``sqlite``, ``postgres``, ``mysql``) provides.

A dict's row in the version table holds its version, the token of the commit that made it, the
store's identity and a secret. Every write first locks that row and reads the version and token
there, then writes the data, raises the version, records its own token beside it and logs each
changed key with that token: writers from any number of processes serialise, ``setdefault`` and
``compare_and_set`` have one winner, and the log can tell which history a version belongs to. A
cache catches up in one query (the log since its version joined with the current values).
"""

from __future__ import annotations

import importlib
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..._backend import Delta, new_token
from ...errors import BackendError, EncodeError
from .columns import Columns

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["Dialect", "Identity", "Session", "Statements", "Write"]


# The dialect of each kind of database, imported only when used (each needs its own driver).
_DIALECTS = {
    "sqlite": (".sqlite", "SqliteDialect"),
    "postgres": (".postgres", "PostgresDialect"),
    "mysql": (".mysql", "MysqlDialect"),
}


#: The kinds of database a dict can be kept in.
DIALECT_KINDS = frozenset(_DIALECTS)


def dialect_for(kind: str) -> type[Dialect]:
    """The dialect of a Tortoise client's kind of database; ``ValueError`` for another."""
    if kind not in _DIALECTS:
        raise ValueError(
            f"ModelDict supports SQLite, PostgreSQL (through Tortoise's asyncpg client) and MySQL, not {kind}"
        )
    module, name = _DIALECTS[kind]
    dialect: type[Dialect] = getattr(importlib.import_module(module, __package__), name)
    return dialect


class Session(Protocol):
    """One driver connection, as the dict uses it; statements take ``$n`` parameters."""

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        """The rows ``sql`` returns with ``args``."""

    async def execute(self, sql: str, args: Sequence[Any]) -> None:
        """Run ``sql`` with ``args``, for its effect."""

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once per row of arguments (in as few round trips as the driver can)."""


class Statements:
    """The SQL of one dict, with ``$n`` parameters. Where the table holds many dicts, the keyspace
    is always the last parameter. Each dialect fills in its own."""

    #: $1 name, $2 store, $3 secret: the version row, unless it exists.
    ensure_version: str
    #: $1 name, $2 store, $3 secret: a row made by an older release gets its identity.
    fill_identity: str
    #: $1 name: store, secret.
    identity: str
    #: version, token, key, value (one row per key, or one row with NULLs).
    load: str
    #: $1 name, $2 version: version, horizon, token, the token at $2, changed key, its value.
    since: str
    #: $1 name: version, token, under a lock held until the transaction ends.
    lock: str
    #: $1 name, $2 version, $3 token.
    commit: str
    upsert: str
    get: str
    delete: str
    select_all: str
    delete_all: str
    #: $1 name, $2 version, $3 key, $4 token.
    log: str
    trim: str
    horizon: str
    #: $1 name: the dict's log rows, and its version row (drop()).
    forget_log: str
    forget_version: str


@dataclass(frozen=True, slots=True)
class Identity:
    """What the version row says about the store: a random id made with the row (it names the NOTIFY
    channel and the memcached marker) and a secret (it signs notices)."""

    store: str
    secret: bytes

    @staticmethod
    def new() -> tuple[str, str]:
        """A fresh store id and secret, as the version row keeps them (hex)."""
        return secrets.token_hex(16), secrets.token_hex(32)


class Write:
    """One write transaction, holding the dict's lock: ``version`` and ``token`` are the store's."""

    def __init__(self, dialect: Dialect, s: Session, version: int, token: str | None) -> None:
        self.dialect = dialect
        self.s = s
        self.version = version
        self.token = token

    def reading(self, changes: Mapping[str, bytes | None]) -> Delta:
        """What the store holds now, nothing written."""
        return Delta(self.version, dict(changes), token=self.token)

    async def get(self, key: str) -> bytes | None:
        """The stored value of ``key`` (under the lock: no other dict writes meanwhile)."""
        d = self.dialect
        rows = await self.s.fetch(d.sql.get, d.scope(key))
        return None if not rows or rows[0][0] is None else d.cols.out(rows[0][0])

    async def commit(self, changes: Mapping[str, bytes | None]) -> Delta:
        """Raise the version with a new token and log ``changes``; the commit's delta."""
        d, s = self.dialect, self.s
        version, token = self.version + 1, new_token()
        await s.execute(d.sql.commit, [d.name, version, token])
        await s.executemany(d.sql.log, [[d.name, version, key, token] for key in changes])
        delta = Delta(version, dict(changes), prev=self.version, token=token, prev_token=self.token)
        await d.announce(s, delta)
        if d.trim_due(version):
            await d.trim(s, version)
        return delta


class Dialect(ABC):
    """One SQL database's way of keeping a dict: statements, sessions, preparation, key checks and
    the writes. ``errors`` are the driver's exceptions, reported as ``BackendError``; ``pushes``: the
    database tells listeners of each commit (a ``PushBackend`` follows it); ``one_connection``: the
    application and the dict share one connection, so a dict cannot be used inside the
    application's open transaction."""

    kind: ClassVar[str]
    errors: ClassVar[tuple[type[BaseException], ...]]
    pushes: ClassVar[bool] = False
    one_connection: ClassVar[bool] = False

    def __init__(self, cols: Columns, name: str, keyspace: str | None, log_keep: int) -> None:
        self.cols = cols
        self.name = name
        self.keyspace = keyspace
        self.log_keep = log_keep
        #: The log is trimmed every ``trim_every`` versions: it holds up to ``log_keep + trim_every``.
        self.trim_every: int = max(1, min(100, log_keep // 4))

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

    def closing(self) -> AbstractAsyncContextManager[None]:
        """Around closing the dict's own client: what the driver needs then (nothing, but on SQLite)."""
        return nullcontext()

    @abstractmethod
    async def create(self, client: BaseDBAsyncClient) -> None:
        """Create the library's tables when missing, add the columns an older release lacked, check
        the columns the dict relies on."""

    def check_key(self, key: str) -> None:
        """Raise ``InvalidKeyError`` for a key this database cannot keep apart from others."""
        return

    def check_text(self, key: str, text: str) -> None:
        """Raise ``EncodeError`` for a text value this database cannot store."""
        return

    async def announce(self, s: Session, delta: Delta) -> None:
        """Tell listeners about a commit, inside its transaction (only PostgreSQL can)."""
        return

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

    def missing(self) -> BackendError:
        """The error for a dict whose version row is gone (dropped, or never made)."""
        return BackendError(f"the version row of dict {self.name!r} is missing")

    async def prepare(self, client: BaseDBAsyncClient) -> Identity:
        """Everything ``start()`` needs: the tables, the dict's version row, and its identity."""
        await self.create(client)
        store, secret = Identity.new()
        async with self.session(client) as s:
            await s.execute(self.sql.ensure_version, [self.name, store, secret])
            rows = await s.fetch(self.sql.identity, [self.name])
            if rows and (rows[0][0] is None or rows[0][1] is None):
                # Made by a release that kept no identity: the first opener gives it one.
                await s.execute(self.sql.fill_identity, [self.name, store, secret])
                rows = await s.fetch(self.sql.identity, [self.name])
        if not rows:
            raise self.missing()
        return Identity(str(rows[0][0]), bytes.fromhex(str(rows[0][1])))

    # -- reads -------------------------------------------------------------------------------------

    async def load(self, client: BaseDBAsyncClient) -> Delta:
        """Every entry, the version and its token, read by one statement (one snapshot)."""
        async with self.session(client) as s:
            rows = await s.fetch(self.sql.load, self.scope(self.name))
        if not rows:
            raise self.missing()
        out = self.cols.out
        changes = {row[2]: out(row[3]) for row in rows if row[2] is not None and row[3] is not None}
        return Delta(version=int(rows[0][0]), changes=changes, full=True, token=rows[0][1])

    async def since(self, client: BaseDBAsyncClient, version: int) -> tuple[int, str | None, Delta | None]:
        """The store's version and token, and what changed after ``version``, in one query; the delta is
        ``None`` when only a full load can tell (``version`` older than the log, or newer than the store)."""
        async with self.session(client) as s:
            rows = await s.fetch(self.sql.since, self.scope(self.name, version))
        if not rows:
            raise self.missing()
        current, horizon, token = int(rows[0][0]), int(rows[0][1]), rows[0][2]
        if version == current:
            return current, token, Delta(version=current, prev=current, token=token, prev_token=token)
        if version > current or version < horizon:
            return current, token, None
        out = self.cols.out
        changes = {row[4]: (None if row[5] is None else out(row[5])) for row in rows if row[4] is not None}
        delta = Delta(version=current, changes=changes, prev=version, token=token, prev_token=rows[0][3])
        return current, token, delta

    async def read(self, client: BaseDBAsyncClient, key: str) -> Delta:
        """One key as the store holds it, with the version and token (under the lock: consistent)."""
        self.stored(key)
        async with self.writing(client) as w:
            return w.reading({key: await w.get(key)})

    async def drop(self, client: BaseDBAsyncClient) -> None:
        """Delete the dict's rows, its log and its version row, in one transaction."""
        async with self.writing(client) as w:
            await w.s.execute(self.sql.delete_all, self.scope())
            await w.s.execute(self.sql.forget_log, [self.name])
            await w.s.execute(self.sql.forget_version, [self.name])

    # -- writes ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def writing(self, client: BaseDBAsyncClient) -> AsyncIterator[Write]:
        """A write transaction that holds the dict's lock."""
        async with self.session(client, write=True) as s:
            rows = await s.fetch(self.sql.lock, [self.name])
            if not rows:
                raise self.missing()
            yield Write(self, s, int(rows[0][0]), rows[0][1])

    def trim_due(self, version: int) -> bool:
        """Whether the commit of ``version`` should trim the log (every ``trim_every`` versions, once
        the log is longer than ``log_keep``)."""
        return version % self.trim_every == 0 and version > self.log_keep

    async def trim(self, s: Session, version: int) -> None:
        """Forget the log before ``version - log_keep`` (the horizon's own rows stay: they name its
        token); the horizon moves first, so that a reader never takes a log with holes for a whole one."""
        horizon = version - self.log_keep
        await s.execute(self.sql.horizon, [self.name, horizon])
        await s.execute(self.sql.trim, [self.name, horizon])

    async def set(self, client: BaseDBAsyncClient, key: str, value: bytes) -> Delta:
        """Upsert one row."""
        stored = self.stored(key, value)
        async with self.writing(client) as w:
            await w.s.execute(self.sql.upsert, self.scope(key, stored))
            return await w.commit({key: value})

    async def update(self, client: BaseDBAsyncClient, items: Mapping[str, bytes]) -> Delta:
        """Upsert every row in one transaction."""
        rows = [self.scope(key, self.stored(key, value)) for key, value in items.items()]
        async with self.writing(client) as w:
            await w.s.executemany(self.sql.upsert, rows)
            return await w.commit(items)

    async def pop(self, client: BaseDBAsyncClient, key: str) -> tuple[Delta, bytes | None]:
        """Delete one row; the commit and the value it held, or a reading when it is absent."""
        self.stored(key)
        async with self.writing(client) as w:
            old = await w.get(key)
            if old is None:
                return w.reading({key: None}), None
            await w.s.execute(self.sql.delete, self.scope(key))
            return await w.commit({key: None}), old

    async def setdefault(self, client: BaseDBAsyncClient, key: str, value: bytes) -> tuple[Delta, bytes]:
        """Insert the row unless the key is present; exactly one of concurrent callers writes."""
        stored = self.stored(key, value)
        async with self.writing(client) as w:
            existing = await w.get(key)
            if existing is not None:
                return w.reading({key: existing}), existing
            await w.s.execute(self.sql.upsert, self.scope(key, stored))
            return await w.commit({key: value}), value

    async def clear(self, client: BaseDBAsyncClient) -> Delta:
        """Delete every row of the dict in one transaction."""
        async with self.writing(client) as w:
            rows = await w.s.fetch(self.sql.select_all, self.scope())
            if not rows:
                # Nothing to remove, and we hold the lock: the dict is empty at this version.
                return Delta(w.version, full=True, token=w.token)
            await w.s.execute(self.sql.delete_all, self.scope())
            return await w.commit({row[0]: None for row in rows})

    async def compare_and_set(
        self, client: BaseDBAsyncClient, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        """Store ``new`` (``None``: remove) if the stored value is ``expected`` (``None``: absent)."""
        stored = self.stored(key, new)
        async with self.writing(client) as w:
            current = await w.get(key)
            if current != expected:
                return w.reading({key: current}), False
            if current is None and new is None:
                return w.reading({key: None}), True
            if new is None:
                await w.s.execute(self.sql.delete, self.scope(key))
            else:
                await w.s.execute(self.sql.upsert, self.scope(key, stored))
            return await w.commit({key: new}), True
