"""The memcached marker: a copy of a dict's version that polls read instead of the database.

It is only a hint. It only moves up (compare-and-swap after each commit); a poll skips the database
only when the marker equals the cache's version, and puts it back to the database's version otherwise,
never to a guess.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ._aiomcache import drop_idle_connections

if TYPE_CHECKING:
    import aiomcache

__all__ = ["Marker"]


class Marker:
    """A dict's version in memcached, under ``key``.

    Every call is bounded by ``timeout``, and a call that did not finish drops the pool's idle
    connections (see ``_aiomcache``). After a failure the marker is left alone for ``backoff``
    seconds, so that a dead memcached costs writers and polls nothing.
    """

    def __init__(self, client: aiomcache.Client, key: bytes, timeout: float, backoff: float = 1.0) -> None:
        self.client = client
        self.key = key
        self.timeout = timeout
        self.backoff = backoff
        self.down_until = 0.0
        self.failures = 0

    async def _call(self, method: str, *args: Any) -> Any:
        """One memcached call; ``None`` when memcached is down, slow or confused (the marker is a hint)."""
        if time.monotonic() < self.down_until:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await getattr(self.client, method)(self.key, *args)
        except asyncio.CancelledError:
            drop_idle_connections(self.client)
            raise
        except Exception:  # noqa: BLE001
            # TimeoutError, OSError, aiomcache.ClientException: whatever it was, start afresh.
            drop_idle_connections(self.client)
            self.failures += 1
            self.down_until = time.monotonic() + self.backoff
            return None

    async def read(self) -> tuple[int | None, int | None]:
        """The marker's version and CAS token; ``(None, None)`` when missing or unreadable."""
        got = await self._call("gets")
        if got is None or got[0] is None:
            return None, None
        raw, token = got
        try:
            return int(raw), token
        except ValueError:
            return None, token

    async def raise_to(
        self, version: int, attempts: int = 4, *, known: tuple[int | None, int | None] | None = None
    ) -> bool:
        """Make the marker at least ``version`` (compare-and-swap, so it never goes down).

        ``known``: the marker and its cas token as just read, which saves the first read.
        """
        value = str(version).encode()
        for _ in range(attempts):
            current, token = known if known is not None else await self.read()
            known = None
            if current is not None and current >= version:
                return True
            if token is None:
                if time.monotonic() < self.down_until:
                    return False
                if await self._call("add", value):
                    return True
            elif await self._call("cas", value, token):
                return True
            if time.monotonic() < self.down_until:
                return False
        return False

    async def lower_to(self, version: int, token: int) -> None:
        """Put the marker back to the database's version, unless it moved since it was read."""
        await self._call("cas", str(version).encode(), token)
