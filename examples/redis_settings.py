"""Settings in Redis, shared by every process: writes are pushed to the others within milliseconds.

Two dicts on one keyspace stand for two processes (each has its own client). The example shows the
awaitable API, the synchronous cached view, atomic operations, and watching changes as they come.

Run it against a Redis on loopback: `python examples/redis_settings.py`
(the server from $AIODURABLEDICT_REDIS_URL, else redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from redis.asyncio import Redis

from aiodurabledict import MISSING, RedisDict

REDIS_URL = os.environ.get("AIODURABLEDICT_REDIS_URL", "redis://127.0.0.1:6379/0")
KEYSPACE = f"examples:settings:{os.getpid()}"


async def main() -> None:
    # The clients are ours: the dicts use them and leave them open.
    async with Redis.from_url(REDIS_URL) as web_client, Redis.from_url(REDIS_URL) as worker_client:
        web: RedisDict[Any] = RedisDict(KEYSPACE, web_client)
        worker: RedisDict[Any] = RedisDict(KEYSPACE, worker_client)
        async with web, worker:
            changes = worker.changes()

            # Durable writes: once `set` returns, every process will see the value.
            await web.set("rate_limit", 100)
            await web.update({"maintenance": False, "banner": "Welcome!"})  # one atomic batch

            # The worker's watcher applies the pushed changes; reads are plain dict lookups.
            async with asyncio.timeout(30):
                async for change in changes:
                    old = "absent" if change.old is MISSING else repr(change.old)
                    print(f"worker saw {change.key!r}: {old} -> {change.new!r} (version {change.version})")
                    if change.key == "banner":
                        break
            # One batch is applied at once: seeing the banner, the worker has maintenance too.
            print(f"worker reads rate_limit={worker['rate_limit']}, maintenance={worker['maintenance']}")

            # Atomic in the store: of any number of concurrent callers, exactly one writes.
            winners = await asyncio.gather(
                web.setdefault("leader", "web"), worker.setdefault("leader", "worker")
            )
            assert winners[0] == winners[1]
            print("leader elected:", winners[0])

            print("popped banner:", await web.pop("banner"))
            print("web's snapshot:", await web.snapshot())
            print("status:", worker.status)

            await web.clear()  # leave nothing behind


if __name__ == "__main__":
    asyncio.run(main())
