"""Move a dict that durabledict kept in Redis into aiodurabledict, in one atomic batch.

durabledict's RedisDict kept a hash at the key KEYSPACE (values pickled, then base64-encoded, by its
default PickleEncoding) and a counter at KEYSPACE + "last_updated". aiodurabledict keeps its own
layout, so the content is copied once: read the hash, decode each value, write them all with one
`update()`. Values become JSON (the safe default codec); a value JSON cannot hold (a set, a datetime)
is reported, to be converted by hand, or kept with `codec=PickleCodec()` if every writer is trusted.

Unpickling runs code chosen by whoever wrote the bytes: decode only a store you trust.

Run it: `python examples/migrate_from_durabledict.py` (it first writes a small durabledict-style
hash to play with, on $AIODURABLEDICT_REDIS_URL, else redis://127.0.0.1:6379/0, and removes it after).
"""

from __future__ import annotations

import asyncio
import base64
import os
import pickle
from typing import Any

from redis.asyncio import Redis

from aiodurabledict import EncodeError, JSONCodec, RedisDict

REDIS_URL = os.environ.get("AIODURABLEDICT_REDIS_URL", "redis://127.0.0.1:6379/0")
OLD_KEYSPACE = f"examples:durabledict:{os.getpid()}"
NEW_KEYSPACE = f"examples:migrated:{os.getpid()}"


def decode_durabledict_value(raw: bytes) -> Any:
    """durabledict's PickleEncoding, reversed: base64, then pickle. Trusted stores only."""
    return pickle.loads(base64.decodebytes(raw))  # noqa: S301 - the old store is ours and trusted


async def read_durabledict(client: Redis, keyspace: str) -> dict[str, Any]:
    """Every entry of a durabledict RedisDict, decoded."""
    raw = await client.hgetall(keyspace)
    return {
        key.decode() if isinstance(key, bytes) else key: decode_durabledict_value(
            value if isinstance(value, bytes) else value.encode()
        )
        for key, value in raw.items()
    }


async def migrate(client: Redis, old_keyspace: str, new: RedisDict[Any]) -> list[str]:
    """Copy every JSON-representable entry into ``new`` in one batch; return the keys left behind."""
    codec = JSONCodec()
    entries, left_behind = {}, []
    for key, value in (await read_durabledict(client, old_keyspace)).items():
        try:
            codec.encode(value)
        except (TypeError, ValueError):
            left_behind.append(key)
            continue
        entries[key] = value
    try:
        await new.update(entries)
    except EncodeError as exc:  # pragma: no cover - every value was checked above
        raise SystemExit(f"migration failed, nothing written: {exc}") from exc
    return left_behind


async def seed_durabledict(client: Redis, keyspace: str) -> None:
    """Write a hash the way durabledict's RedisDict did (its PickleEncoding, its counter)."""
    old_values: dict[str, Any] = {"max_upload_mb": 25, "welcome": "Hello!", "beta_users": {"ann", "bob"}}
    for key, value in old_values.items():
        await client.hset(keyspace, key, base64.encodebytes(pickle.dumps(value, pickle.HIGHEST_PROTOCOL)))
    await client.incr(keyspace + "last_updated")


async def main() -> None:
    async with Redis.from_url(REDIS_URL) as client:
        await seed_durabledict(client, OLD_KEYSPACE)
        try:
            async with RedisDict[Any](NEW_KEYSPACE, client) as settings:
                left_behind = await migrate(client, OLD_KEYSPACE, settings)
                print("migrated:", dict(settings.view))
                print("not JSON, convert by hand:", left_behind)
                assert settings["max_upload_mb"] == 25
                assert left_behind == ["beta_users"]
                await settings.clear()
        finally:
            await client.delete(OLD_KEYSPACE, OLD_KEYSPACE + "last_updated")


if __name__ == "__main__":
    asyncio.run(main())
