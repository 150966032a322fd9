"""Fixtures shared by every test: the conformance ``factory`` over every store in ``tests/stores``.

Dicts are opened inside tests with ``async with`` (never held open by a yielding fixture), so a
dict's watcher task is started and stopped in the test's own task.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

import tests.stores
from aiodurabledict.testing.conformance import Factory
from tests.servers import memcached_server, postgres_server, redis_server, zookeeper_server

__all__ = ["factory", "memcached_server", "postgres_server", "redis_server", "zookeeper_server"]


def _store_params() -> list[Any]:
    params: list[Any] = []
    for info in sorted(pkgutil.iter_modules(tests.stores.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"tests.stores.{info.name}")
        params.extend(getattr(module, "PARAMS", []))
    return params


@pytest.fixture(params=_store_params())
async def factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """A factory of unopened dicts on one fresh namespace of one store, as many processes would see it."""
    async with request.param(request) as make:
        yield make
