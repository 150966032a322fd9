"""``zookeeper://[user:password@]host:port[,host:port…]/znode/path`` URLs: a ``ZookeeperDict`` that
owns its client. A user and password are digest credentials (see ``ZookeeperBackend``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from ..._types import DEFAULT_KEYSPACE
from ..._urls import Factory, StoreURL, seconds

__all__ = ["open_url"]


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("expected a positive whole number")
    return number


CLIENT_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "session_timeout": seconds,
    "read_timeout": seconds,
}
DICT_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "request_timeout": seconds,
    "log_keep": _positive_int,
}


def open_url(url: StoreURL) -> Factory:
    """The factory of a ``ZookeeperDict`` on the ensemble ``url`` names."""
    zk_opts = url.take(CLIENT_OPTIONS)
    backend_opts = url.take(DICT_OPTIONS)
    url.refuse_unknown()
    parts = url.parts
    userinfo, at, hosts = parts.netloc.rpartition("@")
    credentials = None
    if at:
        user, colon, password = userinfo.partition(":")
        if not user or not colon:
            raise url.error("zookeeper:// credentials are user:password@ (digest)")
        credentials = (unquote(user), unquote(password))
    servers = [h for h in hosts.split(",") if h]
    if not servers:
        raise url.error("the zookeeper:// URL names no server (zookeeper://host:port/path)")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise url.error(f"expected host:port, got {server!r}")
    path = unquote(parts.path).rstrip("/")
    if path and url.keyspace is not None:
        raise url.error("the URL names its znode twice (in the path and in ?keyspace=)")
    znode = path or "/" + (url.keyspace or DEFAULT_KEYSPACE).strip("/")
    try:
        import aiozk

        from .backend import ZookeeperDict
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise url.missing_extra(exc) from exc

    def make(opts: dict[str, Any]) -> Any:
        client = aiozk.ZKClient(",".join(servers), **zk_opts)
        return ZookeeperDict(znode, client, owns_client=True, credentials=credentials, **backend_opts, **opts)

    return make
