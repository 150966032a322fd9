"""Tools for testing applications that use aiodurabledict, and for testing stores against the contract.

- ``MemoryStore`` has switches to drop notices, fail and freeze, so that an application's handling
  of outages can be tested without a server.
- ``reset_memory_stores()`` forgets every ``memory://NAME`` store of the process (they otherwise
  live as long as it); the pytest plugin's ``memory_stores`` fixture does it around a test.
- ``override(d, key=value, ...)`` sets values for the duration of an ``async with`` and puts the
  previous ones back (absent keys removed again), through the store, as a test wants it.
- ``aiodurabledict.testing.conformance`` holds the contract as a pytest suite, and
  ``aiodurabledict.testing.plugin`` the fixtures (both import pytest: ``pip install
  'aiodurabledict[testing]'``), so neither is imported here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .._dict import AsyncDurableDict
from .._types import MISSING
from ..backends.memory import MemoryBackend, MemoryDict, MemoryStore, MemoryStoreError
from ..backends.memory_url import reset_stores as reset_memory_stores

__all__ = [
    "MemoryBackend",
    "MemoryDict",
    "MemoryStore",
    "MemoryStoreError",
    "override",
    "reset_memory_stores",
]


@asynccontextmanager
async def override(d: AsyncDurableDict[Any], /, **values: Any) -> AsyncIterator[AsyncDurableDict[Any]]:
    """Set ``values`` in the open dict ``d`` (one batch) while in the block; restore them after.

    Usage::

        async with override(settings, feature_x=True, limit=0):
            response = await client.get("/")
    """
    previous = {key: d.view.get(key, MISSING) for key in values}
    await d.update(values)
    try:
        yield d
    finally:
        restore = {k: v for k, v in previous.items() if v is not MISSING}
        if restore:
            await d.update(restore)
        for key in (k for k, v in previous.items() if v is MISSING):
            await d.pop(key, None)
