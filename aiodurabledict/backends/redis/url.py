"""Redis URLs: a ``RedisDict`` that owns its client.

- ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS), ``redis+unix:///socket``;
- ``redis+cluster://[user:password@]host:port[,host:port…]/`` (a ``RedisCluster`` client);
- ``redis+sentinel://[user:password@]host:port[,host:port…]/service[?db=N]`` (the master of
  ``service``, found through the sentinels; ``sentinel_username``/``sentinel_password`` log in to
  the sentinels themselves).

Every scheme also takes the backend's options: ``wait_replicas``, ``wait_timeout``,
``notice_value_limit``, ``tombstone_limit``, ``history_limit``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlencode

from ..._types import DEFAULT_KEYSPACE
from ..._urls import Factory, StoreURL, join, seconds

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


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("expected a whole number >= 0")
    return number


BACKEND_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "wait_replicas": _count,
    "wait_timeout": seconds,
    "notice_value_limit": _count,
    "tombstone_limit": _count,
    "history_limit": _count,
}
# Options of the engines' clients we build ourselves (typed here, not by redis-py's URL parser).
ENGINE_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "socket_timeout": seconds,
    "socket_connect_timeout": seconds,
    "protocol": _count,
}
SENTINEL_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "db": _count,
    "sentinel_username": str,
    "sentinel_password": str,
}


def open_url(url: StoreURL) -> Factory:
    """The factory of a ``RedisDict`` on the server, cluster or Sentinel service ``url`` names."""
    backend_opts = url.take(BACKEND_OPTIONS)
    if url.scheme == "redis+cluster":
        build = _cluster(url)
    elif url.scheme == "redis+sentinel":
        build = _sentinel(url)
    else:
        build = _server(url)
    name = url.keyspace or DEFAULT_KEYSPACE
    try:
        from ._backend import RedisDict
    except ImportError as exc:  # pragma: no cover - the package import already needs redis-py
        raise url.missing_extra(exc) from exc

    def make(opts: dict[str, Any]) -> Any:
        client, also = build()
        return RedisDict(name, client, owns_client=True, also_close=also, **backend_opts, **opts)

    return make


Build = Callable[[], tuple[Any, tuple[Any, ...]]]


def _server(url: StoreURL) -> Build:
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
        if "," in parts.netloc:
            raise url.error(
                f"a {url.scheme}:// URL names one server; use redis+cluster:// or redis+sentinel:// for several"
            )
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise url.error(
                f"the path must be a database number (e.g. /0), not {db!r}; name the dict with ?keyspace="
            )
        client_url = join(url.scheme, parts.netloc, parts.path, urlencode(query))
    from redis.asyncio import Redis

    try:
        # Building the client does no I/O; it only parses and types the options.
        Redis.from_url(client_url)
    except (TypeError, ValueError) as exc:
        raise url.error(f"bad redis URL: {exc}") from None
    return lambda: (Redis.from_url(client_url), ())


def _servers(url: StoreURL) -> list[tuple[str, int]]:
    hosts = url.parts.netloc.rpartition("@")[2]
    servers: list[tuple[str, int]] = []
    for server in hosts.split(","):
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise url.error(f"expected host:port, got {server!r}")
        servers.append((host, int(port)))
    if not servers:
        raise url.error(f"the {url.scheme}:// URL names no server")
    return servers


def _credentials(url: StoreURL) -> dict[str, Any]:
    parts = url.parts
    found: dict[str, Any] = {}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password is not None:
        found["password"] = unquote(parts.password)
    return found


def _cluster(url: StoreURL) -> Build:
    options = {**url.take(ENGINE_OPTIONS), **_credentials(url)}
    url.refuse_unknown()
    if url.parts.path.strip("/"):
        raise url.error("a redis+cluster:// URL names no database (Redis Cluster has only 0)")
    servers = _servers(url)
    from redis.asyncio import RedisCluster
    from redis.asyncio.cluster import ClusterNode

    def build() -> tuple[Any, tuple[Any, ...]]:
        nodes = [ClusterNode(host, port) for host, port in servers]
        return RedisCluster(startup_nodes=nodes, **options), ()

    return build


def _sentinel(url: StoreURL) -> Build:
    options = {**url.take(ENGINE_OPTIONS), **_credentials(url)}
    sentinel_opts = url.take(SENTINEL_OPTIONS)
    url.refuse_unknown()
    service = unquote(url.parts.path.strip("/"))
    if not service or "/" in service:
        raise url.error("a redis+sentinel:// URL names its service in the path (/mymaster)")
    servers = _servers(url)
    db = sentinel_opts.pop("db", 0)
    sentinel_kwargs = {k.removeprefix("sentinel_"): v for k, v in sentinel_opts.items()}
    for name in ("socket_timeout", "socket_connect_timeout"):
        if name in options:
            sentinel_kwargs[name] = options[name]
    from redis.asyncio.sentinel import Sentinel

    def build() -> tuple[Any, tuple[Any, ...]]:
        sentinel = Sentinel(servers, sentinel_kwargs=sentinel_kwargs, **options)  # type: ignore[no-untyped-call, unused-ignore]
        return sentinel.master_for(service, db=db), tuple(sentinel.sentinels)

    return build
