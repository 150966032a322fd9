"""What we need from redis-py beyond its documented surface, and the workarounds for its habits, in one
place so that the next upgrade knows where to look."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from redis.exceptions import MovedError, RedisClusterException, RedisError, ResponseError

from ...errors import BackendError, map_exceptions

__all__ = ["REDIS_ERRORS", "db_of", "decodes_responses", "honour_cancel", "redis_errors"]

T = TypeVar("T")

#: What redis-py raises when the server or the network fails. ``RedisClusterException`` (slot not
#: covered, no node for a key) is not a ``RedisError``; ``OSError`` escapes from socket setup.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


@contextmanager
def redis_errors(message: str = "Redis failed") -> Iterator[None]:
    """Map redis-py's errors to ``BackendError`` (the native error as ``__cause__``).

    ``MOVED`` from a plain client means it talks to a cluster node that does not own the dict's
    slot: said plainly, since no retry of the same call can succeed.
    """
    try:
        with map_exceptions(*REDIS_ERRORS, message=message):
            yield
    except BackendError as exc:
        cause = exc.__cause__
        if isinstance(cause, MovedError) or (isinstance(cause, ResponseError) and "MOVED" in str(cause)):
            raise BackendError(
                "this Redis server is a Redis Cluster node that does not own the dict's slot "
                "(MOVED); use a RedisCluster client or a redis+cluster:// URL"
            ) from cause
        raise


async def honour_cancel(call: Awaitable[T], discard: Callable[[T], Awaitable[object]] | None = None) -> T:
    """Await ``call``, and raise ``CancelledError`` if a cancellation arrived and was swallowed.

    redis-py can absorb a cancellation that lands while a connection is being set up or a pipeline
    is read (the call then returns normally); a task that is being stopped must still stop. What the
    call made (a connection) is then handed to ``discard`` first, so that nothing is left open.
    """
    task = asyncio.current_task()
    before = 0 if task is None else task.cancelling()
    result = await call
    if task is not None and task.cancelling() > before:
        if discard is not None:
            await discard(result)
        raise asyncio.CancelledError
    return result


def decodes_responses(client: Any) -> bool:
    """Whether the client decodes replies to str (then MULTI pipelines would decode values)."""
    try:
        return bool(client.get_encoder().decode_responses)
    except AttributeError:
        return True  # unknown client: take the path that is right either way


def db_of(client: Any) -> int:
    """The database number the client talks to (0 where it cannot tell, as on Redis Cluster)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    try:
        return int(kwargs.get("db") or 0)
    except (TypeError, ValueError):
        return 0
