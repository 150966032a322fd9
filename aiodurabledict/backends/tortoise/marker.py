"""The memcached marker: the version and commit token of a dict's latest commit, which ``sync()`` and
polls read instead of the database.

It is only a hint, kept honest by these rules:

- A reader trusts it only when it names exactly the commit the reader last learnt from the database
  (or from a signed notice), and every ``confirm_interval`` asks the database anyway. A missing or
  unreadable marker sends readers to the database.
- Before its write returns, a writer moves the marker up to its commit (compare-and-swap). It never
  creates a missing marker (its news may be older than a commit whose mark was lost in a flush), and
  it deletes what it cannot move or must not trust (a reader's claim, below).
- A reader that went to the database puts the marker back to what it found, by compare-and-swap
  against what it read before the query; a missing marker it first claims (``pending``), so that a
  writer that commits meanwhile spoils the claim, and the reader's older news is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._aiomcache import Reader, drop_idle_connections

if TYPE_CHECKING:
    import aiomcache

__all__ = ["Mark", "Marker", "Seen"]

_PENDING = b"pending"

log: logging.Logger = logging.getLogger("aiodurabledict")

# What a memcached call can fail with: its client's own errors, the network, our timeout, a reply cut short.
_FAILURES: tuple[type[BaseException], ...] = (OSError, TimeoutError, EOFError)
try:
    from aiomcache.exceptions import ClientException

    _FAILURES = (*_FAILURES, ClientException)
except ImportError:  # pragma: no cover - the marker is only made with an aiomcache client
    pass


@dataclass(frozen=True, slots=True)
class Mark:
    """A commit: the dict's version and its token (``None`` where the store kept none)."""

    version: int
    token: str | None

    def encode(self) -> bytes:
        """The marker's value: ``version:token`` in ASCII (``decode`` reads it back)."""
        return f"{self.version}:{self.token or ''}".encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> Mark | None:
        """The mark ``raw`` holds; ``None`` for anything else (a marker of another format)."""
        version, sep, token = raw.partition(b":")
        if not sep or not version.isdigit():
            return None
        try:
            return cls(int(version), token.decode("ascii") or None)
        except UnicodeDecodeError:
            return None


@dataclass(frozen=True, slots=True)
class Seen:
    """A read of the marker: its mark (``None``: missing or unreadable) and its CAS token."""

    mark: Mark | None
    cas: int | None


class Marker:
    """A dict's latest commit in memcached, under ``key``.

    Every call is bounded by ``timeout`` (a writer's whole update too), and a call that did not finish
    drops the pool's idle connections (see ``_aiomcache``). After a failed read, reads rest for
    ``backoff`` seconds (the database answers meanwhile); writers never rest: a write they could not
    mark would be invisible to readers who trust the marker.
    """

    def __init__(self, client: aiomcache.Client, key: bytes, timeout: float, backoff: float = 1.0) -> None:
        self.client = client
        self.key = key
        self.timeout = timeout
        self.backoff = backoff
        #: Reads rest until this ``time.monotonic()`` after a failure.
        self.down_until: float = 0.0
        #: memcached calls that failed so far.
        self.failures: int = 0
        self._warned_at = 0.0
        try:
            self._reader: Reader | None = Reader(client, timeout)
        except AttributeError:  # not aiomcache's client: its own calls will do
            self._reader = None

    def close(self) -> None:
        """Close the connection the marker reads on (the client stays the user's)."""
        if self._reader is not None:
            self._reader.close()

    def __repr__(self) -> str:
        return f"Marker({self.key.decode()!r})"

    async def _call(self, method: str, *args: Any) -> Any:
        """One memcached call; raises one of ``_FAILURES`` when memcached is down, slow or confused."""
        try:
            async with asyncio.timeout(self.timeout):
                return await getattr(self.client, method)(self.key, *args)
        except BaseException:
            drop_idle_connections(self.client)
            raise

    def _failed(self) -> None:
        self.failures += 1
        self.down_until = time.monotonic() + self.backoff

    async def read(self) -> Seen | None:
        """The marker as memcached holds it now; ``None`` when memcached cannot be asked."""
        if time.monotonic() < self.down_until:
            return None
        try:
            got = await self._reader.gets(self.key) if self._reader is not None else None
            raw, cas = got if got is not None else await self._call("gets")
        except _FAILURES:
            self._failed()
            return None
        if not isinstance(raw, bytes):
            return Seen(None, None)
        return Seen(Mark.decode(raw), cas)

    async def claim(self, seen: Seen) -> Seen | None:
        """Before asking the database: a marker to put right afterwards (``repair``), or ``None``.

        A missing marker is claimed (``pending``), so that a commit meanwhile spoils the claim."""
        if seen.cas is not None:
            return seen
        try:
            if not await self._call("add", _PENDING):
                return None
            got = await self._call("gets")
        except _FAILURES:
            self._failed()
            return None
        return None if got is None or got[0] != _PENDING else Seen(None, got[1])

    async def repair(self, truth: Mark, seen: Seen) -> None:
        """Put the marker to ``truth`` (what the database said after ``seen`` was read or claimed),
        unless a writer moved it meanwhile."""
        cas = seen.cas
        if seen.mark == truth or cas is None:
            return
        try:
            await self._call("cas", truth.encode(), cas)
        except _FAILURES:
            self._failed()

    async def raise_to(self, mark: Mark, attempts: int = 4) -> bool:
        """After a commit, before the write returns: move the marker up to ``mark`` unless it is
        missing or names a later commit; when that cannot be done, delete it. ``False`` when memcached
        could be neither updated nor cleared (readers then miss the commit until they confirm against
        the database)."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._raise(mark, attempts)
                return True
        except _FAILURES:
            drop_idle_connections(self.client)
            self.failures += 1
            return await self.forget()
        except BaseException:
            drop_idle_connections(self.client)
            raise

    async def _raise(self, mark: Mark, attempts: int) -> None:
        client, key = self.client, self.key
        for _ in range(attempts):
            raw, cas = await client.gets(key)
            if raw is None or cas is None:
                return
            current = Mark.decode(raw)
            if current is None:
                # A reader's claim (or a stranger's value): spoil it.
                break
            if current.version > mark.version or current == mark:
                return
            if await client.cas(key, mark.encode(), cas):
                return
        # A claim to spoil, or other writers keep moving it: a missing marker is always safe.
        await client.delete(key)

    async def forget(self) -> bool:
        """Delete the marker (readers then ask the database); ``False``, with a warning at most once a
        minute, when memcached does not answer."""
        try:
            await self._call("delete")
        except _FAILURES:
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning(
                    "memcached marker %s: memcached does not answer, so a commit could not be marked; "
                    "readers that trust the marker may miss it until they confirm against the database",
                    self.key.decode(),
                )
            return False
        return True
