"""Fixtures shared by every test: the conformance ``factory`` over every store in ``tests/stores``.

Dicts are opened inside tests with ``async with`` (never held open by a yielding fixture), so a
dict's watcher task is started and stopped in the test's own task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aiodurabledict.testing.conformance import Factory
from tests.servers import memcached_server, postgres_server, redis_server, zookeeper_server
from tests.stores import params

__all__ = ["factory", "memcached_server", "postgres_server", "redis_server", "zookeeper_server"]


@pytest.fixture(params=params())
async def factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """A factory of unopened dicts on one fresh namespace of one store, as many processes would see it."""
    async with request.param(request) as make:
        yield make
