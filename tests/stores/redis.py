"""Redis for the conformance suite: plain, with a decoding client, with notices lost, and trimmed.

Every dict a factory makes has a client of its own (as another process would), on one fresh keyspace
per test; the keyspace's keys are deleted and the clients closed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aiodurabledict import AsyncDurableDict
from aiodurabledict.testing.conformance import Factory
from tests.servers import redis_url, unavailable
from tests.wrappers import deaf

REDIS_URL = redis_url()


@asynccontextmanager
async def redis_keyspace(url: str = REDIS_URL) -> AsyncIterator[tuple[str, list[Any]]]:
    """A fresh keyspace and a list that collects clients to close; deletes the keyspace afterwards."""
    try:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError
    except ImportError:
        unavailable("redis-py is not installed")
    admin = Redis.from_url(url)
    try:
        await admin.ping()
    except (RedisError, OSError) as exc:
        await admin.aclose()
        unavailable(f"Redis at {url} is unreachable: {exc}")
    keyspace = f"test:{uuid.uuid4().hex}"
    clients: list[Any] = [admin]
    try:
        yield keyspace, clients
    finally:
        try:
            await drop_keyspace(admin, keyspace)
        finally:
            for client in clients:
                await client.aclose()


async def drop_keyspace(admin: Any, keyspace: str) -> None:
    """Delete every key of ``keyspace`` (they share its hash tag)."""
    names = [name async for name in admin.scan_iter(match=f"{{{keyspace}}}:*", count=1000)]
    if names:
        await admin.delete(*names)


def _redis(*, lossy: bool = False, heartbeat: float = 2.0, **options: Any) -> Any:
    client_opts = {k: options.pop(k) for k in ("decode_responses", "protocol") if k in options}

    @asynccontextmanager
    async def factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
        from redis.asyncio import Redis

        from aiodurabledict.backends.redis import RedisBackend

        async with redis_keyspace() as (keyspace, clients):

            async def make(**opts: Any) -> AsyncDurableDict[Any]:
                client = Redis.from_url(REDIS_URL, **client_opts)
                clients.append(client)
                backend = RedisBackend(keyspace, client, **options)
                opts.setdefault("heartbeat", heartbeat)
                return AsyncDurableDict(deaf(backend) if lossy else backend, **opts)

            yield make

    return factory


PARAMS = [
    pytest.param(_redis(), id="redis", marks=pytest.mark.redis),
    pytest.param(
        _redis(decode_responses=True, protocol=3), id="redis-decoding-resp3", marks=pytest.mark.redis
    ),
    pytest.param(_redis(lossy=True, heartbeat=0.2), id="redis-lossy", marks=pytest.mark.redis),
    pytest.param(
        _redis(tombstone_limit=2, history_limit=2, notice_value_limit=0),
        id="redis-trimmed",
        marks=pytest.mark.redis,
    ),
]
