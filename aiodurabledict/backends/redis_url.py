"""``redis://``, ``rediss://`` and ``redis+unix://`` URLs: a ``RedisDict`` that owns its client."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from .._types import DEFAULT_KEYSPACE
from .._urls import Factory, StoreURL, join

__all__ = ["open_url"]

# Query options handed to redis-py's own URL parser (it types them); anything else is refused here
# rather than failing later inside a connection.
PASSTHROUGH = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_read_size",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "client_name",
        "protocol",
        "username",
        "password",
    }
)


def open_url(url: StoreURL) -> Factory:
    """The factory of a ``RedisDict`` on the server ``url`` names."""
    parts, query = url.parts, url.query
    tls = {k for k in query if k.startswith("ssl_")}
    url.refuse_unknown(PASSTHROUGH | tls)
    if url.scheme == "redis+unix":
        if not parts.path:
            raise url.error("the redis+unix:// URL names no socket path")
        client_url = join("unix", parts.netloc, parts.path, urlencode(query))
    else:
        if not parts.hostname:
            raise url.error(f"the {url.scheme}:// URL names no host")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise url.error(
                f"the path must be a database number (e.g. /0), not {db!r}; name the dict with ?keyspace="
            )
        client_url = join(url.scheme, parts.netloc, parts.path, urlencode(query))
    name = url.keyspace or DEFAULT_KEYSPACE
    try:
        import redis.asyncio as redis_asyncio

        from .redis import RedisDict
    except ImportError as exc:
        raise url.missing_extra(exc) from exc
    try:
        # Building the client does no I/O; it only parses and types the options.
        client = redis_asyncio.Redis.from_url(client_url)
    except (TypeError, ValueError) as exc:
        raise url.error(f"bad redis URL: {exc}") from None

    def make(opts: dict[str, Any]) -> Any:
        return RedisDict(name, client, owns_client=True, **opts)

    return make
