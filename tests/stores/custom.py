"""A user's own backend (examples/custom_backend.py) held to the same contract as the shipped ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aiodurabledict import AsyncDurableDict
from aiodurabledict.testing.conformance import Factory
from examples.custom_backend import SqliteBackend


@asynccontextmanager
async def _custom(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    path = request.getfixturevalue("tmp_path") / "custom.db"

    async def make(**opts: Any) -> AsyncDurableDict[Any]:
        opts.setdefault("heartbeat", 0.5)
        return AsyncDurableDict(SqliteBackend(path), **opts)

    yield make


PARAMS = [pytest.param(_custom, id="custom-sqlite3")]
