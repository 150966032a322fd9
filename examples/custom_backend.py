"""A store of your own: the backend protocol over the standard library's sqlite3, in one small class.

Every row keeps the version that last wrote it, and a deleted key stays as a row with no value (a
tombstone), so `changes_since` is one indexed query. Each commit's token is kept in `commits`, so a
cache can tell this file from a restored copy of it. The dict polls it, since sqlite cannot push.
Run it: `python examples/custom_backend.py`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiodurabledict import AsyncDurableDict, Delta, new_token

SCHEMA = """
create table if not exists kv (key text primary key, value blob, version integer not null);
create index if not exists kv_version on kv (version);
create table if not exists commits (version integer primary key, token text not null);
"""


class SqliteBackend:
    """Bytes in a sqlite file; each commit raises the version by one and records its token."""

    max_key_bytes = 1024
    max_value_bytes: int | None = None
    poll_interval = 0.05

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("pragma journal_mode=wal")
        return db

    async def _run(self, work: Any, *args: Any) -> Any:
        def call() -> Any:
            with self._connect() as db:
                return work(db, *args)

        return await asyncio.to_thread(call)

    async def start(self) -> None:
        await self._run(lambda db: db.executescript(SCHEMA))

    async def aclose(self) -> None:
        return None

    @staticmethod
    def _head(db: sqlite3.Connection) -> tuple[int, str | None]:
        """The version and the token of the last commit (0 and None for a new store)."""
        row = db.execute("select version, token from commits order by version desc limit 1").fetchone()
        return (0, None) if row is None else (int(row[0]), str(row[1]))

    @staticmethod
    def _token_at(db: sqlite3.Connection, version: int) -> str | None:
        row = db.execute("select token from commits where version = ?", (version,)).fetchone()
        return None if row is None else str(row[0])

    async def load(self) -> Delta:
        def work(db: sqlite3.Connection) -> Delta:
            db.execute("begin")
            rows = db.execute("select key, value from kv where value is not null").fetchall()
            version, token = self._head(db)
            db.execute("commit")
            return Delta(version, dict(rows), full=True, token=token)

        result: Delta = await self._run(work)
        return result

    async def changes_since(self, version: int) -> Delta:
        def work(db: sqlite3.Connection) -> Delta:
            db.execute("begin")
            now, token = self._head(db)
            if version > now:
                # Newer than this store: it lost writes (a restored copy): everything.
                rows = db.execute("select key, value from kv where value is not null").fetchall()
                db.execute("commit")
                return Delta(now, dict(rows), full=True, token=token)
            rows = db.execute("select key, value from kv where version > ?", (version,)).fetchall()
            prev_token = self._token_at(db, version)
            db.execute("commit")
            return Delta(now, dict(rows), prev=version, token=token, prev_token=prev_token)

        result: Delta = await self._run(work)
        return result

    def _commit(self, db: sqlite3.Connection, changes: Mapping[str, bytes | None]) -> Delta:
        prev, prev_token = self._head(db)
        version, token = prev + 1, new_token()
        db.executemany(
            "insert into kv (key, value, version) values (?, ?, ?) "
            "on conflict (key) do update set value = excluded.value, version = excluded.version",
            [(key, value, version) for key, value in changes.items()],
        )
        db.execute("insert into commits (version, token) values (?, ?)", (version, token))
        db.execute("commit")
        return Delta(version, dict(changes), prev=prev, token=token, prev_token=prev_token)

    def _reading(self, db: sqlite3.Connection, changes: Mapping[str, bytes | None]) -> Delta:
        """What the store holds now, with nothing written."""
        version, token = self._head(db)
        return Delta(version, dict(changes), token=token)

    async def _write(self, decide: Any) -> Any:
        """Run ``decide(db)`` in one immediate transaction: writers queue instead of racing."""

        def work(db: sqlite3.Connection) -> Any:
            db.execute("begin immediate")
            try:
                return decide(db)
            finally:
                if db.in_transaction:
                    db.execute("rollback")

        return await self._run(work)

    @staticmethod
    def _get(db: sqlite3.Connection, key: str) -> bytes | None:
        row = db.execute("select value from kv where key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    async def set(self, key: str, value: bytes) -> Delta:
        result: Delta = await self._write(lambda db: self._commit(db, {key: value}))
        return result

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        def decide(db: sqlite3.Connection) -> tuple[Delta, bytes | None]:
            old = self._get(db, key)
            if old is None:
                return self._reading(db, {key: None}), None
            return self._commit(db, {key: None}), old

        result: tuple[Delta, bytes | None] = await self._write(decide)
        return result

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        def decide(db: sqlite3.Connection) -> tuple[Delta, bytes]:
            old = self._get(db, key)
            if old is not None:
                return self._reading(db, {key: old}), old
            return self._commit(db, {key: value}), value

        result: tuple[Delta, bytes] = await self._write(decide)
        return result

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        result: Delta = await self._write(lambda db: self._commit(db, items))
        return result

    async def clear(self) -> Delta:
        def decide(db: sqlite3.Connection) -> Delta:
            keys = [k for (k,) in db.execute("select key from kv where value is not null")]
            return self._commit(db, dict.fromkeys(keys)) if keys else self._reading(db, {})

        result: Delta = await self._write(decide)
        return result

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        def decide(db: sqlite3.Connection) -> tuple[Delta, bool]:
            current = self._get(db, key)
            if current != expected:
                return self._reading(db, {key: current}), False
            if current is None and new is None:
                return self._reading(db, {key: None}), True
            return self._commit(db, {key: new}), True

        result: tuple[Delta, bool] = await self._write(decide)
        return result


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "settings.db"
        async with (
            AsyncDurableDict[Any](SqliteBackend(path)) as writer,
            AsyncDurableDict[Any](SqliteBackend(path)) as reader,
        ):
            await writer.set("greeting", "hello")
            for _ in range(200):
                if reader.view.get("greeting") == "hello":
                    break
                await asyncio.sleep(0.01)
            print("reader sees:", reader.view.get("greeting"), "at version", reader.version)
            assert reader["greeting"] == "hello"


if __name__ == "__main__":
    asyncio.run(main())
