"""Fixtures for the integration tests: store URLs naming a fresh namespace, cleaned up afterwards."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiodurabledict import open_dict
from tests.integrations._helpers import with_query
from tests.servers import redis_server, require_postgres, unavailable
from tests.stores.redis import REDIS_URL, redis_keyspace

__all__ = ["redis_server", "redis_url", "sqlite_url", "store_url", "unused_port"]


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A ``redis://`` URL naming a fresh keyspace on the shared Redis, deleted afterwards."""
    async with redis_keyspace() as (keyspace, _clients):
        yield with_query(REDIS_URL, keyspace=keyspace)


def sqlite_available() -> None:
    try:
        import aiodurabledict.backends.tortoise  # noqa: F401
    except ImportError as exc:
        unavailable(f"the SQLite store is not importable: {exc}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An ``sqlite://`` URL naming a fresh database file."""
    sqlite_available()
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        "sqlite",
        pytest.param("zookeeper", marks=pytest.mark.zookeeper),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh dict's URL on each store that separate processes can share."""
    if request.param == "sqlite":
        sqlite_available()
        yield f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "zookeeper":
        from tests.stores.zookeeper import ZOOKEEPER, zookeeper_znode

        async with zookeeper_znode() as (path, _clients):
            yield f"zookeeper://{ZOOKEEPER}{path}"
    elif request.param == "postgres":
        sqlite_available()
        url = with_query(require_postgres(), keyspace=f"test-{uuid.uuid4().hex}")
        yield url
        async with open_dict(url, watch=False) as d:
            await d.clear()
    else:
        async with redis_keyspace() as (keyspace, _clients):
            yield with_query(REDIS_URL, keyspace=keyspace)


@pytest.fixture
def unused_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
