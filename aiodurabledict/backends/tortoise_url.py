"""``sqlite://``, ``postgres://`` and ``mysql://`` URLs: a ``ModelDict`` on the ready ``DurableEntry``
table, with a connection of its own."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import quote, urlencode

from .._types import DEFAULT_KEYSPACE
from .._urls import Factory, StoreURL, join

__all__ = ["open_url"]


def open_url(url: StoreURL) -> Factory:
    """The factory of a ``ModelDict`` on the database ``url`` names."""
    parts, scheme = url.parts, url.scheme
    if scheme == "sqlite":
        if parts.netloc:
            raise url.error("the sqlite URL has a host; use sqlite:///relative.db or sqlite:////absolute.db")
        if not parts.path.strip("/"):
            raise url.error("the sqlite URL names no file (sqlite:///file.db)")
    elif not parts.hostname and not parts.path.strip("/"):
        raise url.error(f"the {scheme}:// URL names no host or database")
    # The store's own options (pool sizes, TLS) stay in the URL for the database driver to check.
    db_url = join(scheme, parts.netloc, parts.path, urlencode(url.query, quote_via=quote))
    name = url.keyspace or DEFAULT_KEYSPACE
    try:
        from .tortoise import open_url_dict

        if scheme == "mysql":
            # Tortoise's MySQL client needs asyncmy (or aiomysql); say so now, not at open().
            importlib.import_module("tortoise.backends.mysql.client")
    except ImportError as exc:
        raise url.missing_extra(exc) from exc

    def make(opts: dict[str, Any]) -> Any:
        return open_url_dict(db_url, keyspace=name, **opts)

    return make
