"""The in-process store, plain, with every notice lost, and with a change log trimmed to almost nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aiodurabledict import AsyncDurableDict, MemoryDict, MemoryStore
from aiodurabledict.testing.conformance import Factory


def _store_factory(**store_opts: Any) -> Any:
    @asynccontextmanager
    async def factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
        store = MemoryStore(log_limit=store_opts.get("log_limit", 10_000))
        store.drop_notices = store_opts.get("drop_notices", False)

        async def make(**opts: Any) -> AsyncDurableDict[Any]:
            opts.setdefault("heartbeat", 0.2 if store.drop_notices else 2.0)
            return MemoryDict(store, **opts)

        yield make

    return factory


PARAMS = [
    pytest.param(_store_factory(), id="memory"),
    pytest.param(_store_factory(drop_notices=True), id="memory-lossy"),
    pytest.param(_store_factory(log_limit=2), id="memory-trimmed"),
]
