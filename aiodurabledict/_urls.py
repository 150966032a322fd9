"""``open_dict(url)``: a dict on any store, named by one URL (as the CLI and twelve-factor apps want).

The store's client is imported only for the scheme asked for, so a missing extra fails for that
scheme alone, with the ``pip install`` line that fixes it. URLs are never logged or echoed with their
password (see ``redact``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ._codecs import JSONCodec, RawCodec

if TYPE_CHECKING:
    from ._dict import AsyncDurableDict
    from .backends.memory import MemoryStore

__all__ = ["SCHEMES", "open_dict", "optional_seconds", "redact", "seconds"]

SCHEMES = (
    "redis",
    "rediss",
    "redis+unix",
    "zookeeper",
    "sqlite",
    "postgres",
    "postgresql",
    "mysql",
    "memory",
)
DEFAULT_KEYSPACE = "default"


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def seconds(value: str) -> float:
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("expected a positive number of seconds")
    return seconds


def optional_seconds(value: str) -> float | None:
    return None if value.strip().lower() in {"", "none", "null"} else seconds(value)


def _codec(value: str) -> JSONCodec | RawCodec:
    # Pickle is deliberately absent: whoever can edit a URL in a config file should not be able to
    # make the application unpickle the store's bytes. Pass codec=PickleCodec() in code instead.
    codecs: dict[str, Callable[[], JSONCodec | RawCodec]] = {"json": JSONCodec, "raw": RawCodec}
    try:
        return codecs[value.strip().lower()]()
    except KeyError:
        raise ValueError("expected json or raw (PickleCodec is opt-in: pass codec= in code)") from None


# The dict's own options, valid on every scheme, with the parser that types each.
_COMMON: Mapping[str, Callable[[str], Any]] = {
    "autosync": _bool,
    "watch": _bool,
    "max_staleness": optional_seconds,
    "heartbeat": seconds,
    "poll_interval": seconds,
    "timeout": seconds,
    "codec": _codec,
}

# Query options handed to redis-py's own URL parser (it types them); anything else is refused here
# rather than failing later inside a connection.
_REDIS_PASSTHROUGH = frozenset(
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
_ZOOKEEPER_CLIENT_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "session_timeout": seconds,
    "read_timeout": seconds,
}
_ZOOKEEPER_DICT_OPTIONS: Mapping[str, Callable[[str], Any]] = {"request_timeout": seconds}

_EXTRAS = {
    "redis": "redis",
    "zookeeper": "zookeeper",
    "sqlite": "tortoise",
    "postgres": "postgres",
    "mysql": "mysql",
}


def redact(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` option) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    if "password=" in query:
        query = "&".join(
            f"{name}=***" if name == "password" else item
            for item in query.split("&")
            for name in [item.partition("=")[0]]
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return _join(parts.scheme, netloc, parts.path, query) + (f"#{parts.fragment}" if parts.fragment else "")


def open_dict(url: str, **opts: Any) -> AsyncDurableDict[Any]:
    """An unopened dict on the store ``url`` names; it owns, and closes, the client it makes.

    Schemes: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS),
    ``redis+unix:///path/to/socket``, ``zookeeper://host:port[,host:port…]/znode/path``,
    ``sqlite:///relative.db`` or ``sqlite:////absolute.db``, ``postgres://`` (or ``postgresql://``)
    ``user:password@host:port/database``, ``mysql://user:password@host:port/database`` (MySQL or
    MariaDB), ``memory://[name]`` (one store per name and process).

    Query options, on every scheme: ``keyspace`` (where the path does not name the dict; default
    ``default``), ``autosync``, ``watch`` (true/false), ``max_staleness`` (seconds or ``none``),
    ``heartbeat``, ``poll_interval``, ``timeout`` (seconds), ``codec`` (``json`` or ``raw``).
    Keyword ``opts`` are the dict's options too and win over the URL's.

    Raises ``ValueError`` for a malformed URL, an unknown scheme or option, or a bad option value;
    ``ImportError`` naming the extra to install when the scheme's client library is missing.

    Usage::

        async with open_dict("redis://localhost:6379/0?keyspace=settings") as settings:
            await settings.set("feature_x", True)
    """
    if not isinstance(url, str):
        raise TypeError(f"open_dict() takes a URL string, not {type(url).__name__}")
    try:
        parts = urlsplit(url.strip())
        # Touch the port now: urlsplit parses it lazily and raises on a bad one.
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed store URL {redact(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        given = f"{scheme}://" if scheme else "no scheme"
        raise ValueError(
            f"unsupported store URL {redact(url)!r} ({given}); "
            f"expected one of: {', '.join(s + '://' for s in SCHEMES)}"
        )

    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name in query:
            raise ValueError(f"option {name!r} given twice in store URL {redact(url)!r}")
        query[name] = value

    keyspace = query.pop("keyspace", None)
    if keyspace is not None and not keyspace:
        raise ValueError(f"empty keyspace in store URL {redact(url)!r}")
    dict_opts = _take(query, _COMMON, url)

    if scheme in {"redis", "rediss", "redis+unix"}:
        factory = _redis(parts, query, keyspace, url)
    elif scheme == "zookeeper":
        factory = _zookeeper(parts, query, keyspace, url)
    elif scheme in {"sqlite", "postgres", "postgresql", "mysql"}:
        factory = _tortoise(parts, query, keyspace, url)
    else:
        factory = _memory(parts, query, keyspace, url)
    return factory({**dict_opts, **opts})


def _take(query: dict[str, str], parsers: Mapping[str, Callable[[str], Any]], url: str) -> dict[str, Any]:
    """Pop and type the options ``parsers`` knows from ``query``."""
    typed: dict[str, Any] = {}
    for name, parse in parsers.items():
        if name in query:
            raw = query.pop(name)
            try:
                typed[name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"bad value {raw!r} for option {name!r} in {redact(url)!r}: {exc}") from None
    return typed


def _refuse_unknown(query: Mapping[str, str], url: str, allowed: frozenset[str] = frozenset()) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        known = sorted({*_COMMON, "keyspace", *allowed})
        raise ValueError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in store URL {redact(url)!r}; known options: {', '.join(known)}"
        )


def _join(scheme: str, netloc: str, path: str, query: str) -> str:
    # Not urlunsplit: it drops the empty authority, turning sqlite:////abs.db into sqlite://abs.db.
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def _missing_extra(scheme: str, exc: ImportError) -> ImportError:
    extra = _EXTRAS[scheme]
    return ImportError(
        f"{scheme}:// URLs need the {extra!r} extra (missing module {exc.name!r}): "
        f"pip install 'aiodurabledict[{extra}]'"
    )


Factory = Callable[[dict[str, Any]], "AsyncDurableDict[Any]"]


def _redis(parts: Any, query: dict[str, str], keyspace: str | None, url: str) -> Factory:
    _refuse_unknown({k: v for k, v in query.items() if not k.startswith("ssl_")}, url, _REDIS_PASSTHROUGH)
    if parts.scheme.lower() == "redis+unix":
        if not parts.path:
            raise ValueError(f"redis+unix:// URL {redact(url)!r} names no socket path")
        client_url = _join("unix", parts.netloc, parts.path, urlencode(query))
    else:
        if not parts.hostname:
            raise ValueError(f"{parts.scheme}:// URL {redact(url)!r} names no host")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(
                f"the path of {redact(url)!r} must be a database number (e.g. /0), not {db!r}; "
                "name the dict with ?keyspace="
            )
        client_url = _join(parts.scheme.lower(), parts.netloc, parts.path, urlencode(query))
    name = keyspace or DEFAULT_KEYSPACE
    try:
        import redis.asyncio as redis_asyncio

        from .backends.redis import RedisDict
    except ImportError as exc:
        raise _missing_extra("redis", exc) from exc
    try:
        # Building the client does no I/O; it only parses and types the options.
        client = redis_asyncio.Redis.from_url(client_url)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad redis URL {redact(url)!r}: {exc}") from None

    def make(opts: dict[str, Any]) -> AsyncDurableDict[Any]:
        return RedisDict(name, client, owns_client=True, **opts)

    return make


def _zookeeper(parts: Any, query: dict[str, str], keyspace: str | None, url: str) -> Factory:
    zk_opts = _take(query, _ZOOKEEPER_CLIENT_OPTIONS, url)
    backend_opts = _take(query, _ZOOKEEPER_DICT_OPTIONS, url)
    _refuse_unknown(query, url, frozenset({*_ZOOKEEPER_CLIENT_OPTIONS, *_ZOOKEEPER_DICT_OPTIONS}))
    hosts = parts.netloc.rpartition("@")[2]
    if parts.username or parts.password:
        raise ValueError(f"zookeeper:// URLs take no user or password: {redact(url)!r}")
    servers = [h for h in hosts.split(",") if h]
    if not servers:
        raise ValueError(f"zookeeper:// URL {redact(url)!r} names no server (zookeeper://host:port/path)")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"zookeeper:// URL {redact(url)!r}: expected host:port, got {server!r}")
    path = unquote(parts.path).rstrip("/")
    if path and keyspace is not None:
        raise ValueError(f"{redact(url)!r} names its znode twice (in the path and in ?keyspace=)")
    znode = path or "/" + (keyspace or DEFAULT_KEYSPACE).strip("/")
    try:
        import aiozk

        from .backends.zookeeper import ZookeeperDict
    except ImportError as exc:
        raise _missing_extra("zookeeper", exc) from exc

    def make(opts: dict[str, Any]) -> AsyncDurableDict[Any]:
        client = aiozk.ZKClient(",".join(servers), **zk_opts)
        return ZookeeperDict(znode, client, owns_client=True, **backend_opts, **opts)

    return make


def _tortoise(parts: Any, query: dict[str, str], keyspace: str | None, url: str) -> Factory:
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise ValueError(
                f"sqlite URL {redact(url)!r} has a host; use sqlite:///relative.db or sqlite:////absolute.db"
            )
        if not parts.path.strip("/"):
            raise ValueError(f"sqlite URL {redact(url)!r} names no file (sqlite:///file.db)")
    elif not parts.hostname and not parts.path.strip("/"):
        raise ValueError(f"{scheme}:// URL {redact(url)!r} names no host or database")
    # The store's own options (pool sizes, TLS) stay in the URL for the database driver to check.
    db_url = _join(scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote))
    name = keyspace or DEFAULT_KEYSPACE
    try:
        from .backends.tortoise import open_url_dict

        if scheme == "mysql":
            # Tortoise's MySQL client needs asyncmy (or aiomysql); say so now, not at open().
            importlib.import_module("tortoise.backends.mysql.client")
    except ImportError as exc:
        raise _missing_extra(scheme if scheme in {"sqlite", "mysql"} else "postgres", exc) from exc

    def make(opts: dict[str, Any]) -> AsyncDurableDict[Any]:
        return open_url_dict(db_url, keyspace=name, **opts)

    return make


_memory_stores: dict[str, MemoryStore] = {}


def _memory(parts: Any, query: dict[str, str], keyspace: str | None, url: str) -> Factory:
    _refuse_unknown(query, url)
    named = unquote(parts.netloc + parts.path).strip("/")
    if named and keyspace is not None:
        raise ValueError(f"{redact(url)!r} names its store twice (memory://NAME and ?keyspace=)")
    name = named or keyspace or DEFAULT_KEYSPACE
    from .backends.memory import MemoryDict, MemoryStore

    def make(opts: dict[str, Any]) -> AsyncDurableDict[Any]:
        store = _memory_stores.get(name)
        if store is None:
            store = _memory_stores[name] = MemoryStore()
        return MemoryDict(store, **opts)

    return make
