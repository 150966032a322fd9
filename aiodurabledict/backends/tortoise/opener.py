"""``open_dict``'s opener for ``sqlite://``, ``postgres://`` and ``mysql://`` URLs: a ``ModelDict``
on the library's ready ``DurableEntry`` table, with a connection of its own."""

from __future__ import annotations

import importlib
from typing import Any

from ..._types import DEFAULT_KEYSPACE
from ..._urls import Factory, StoreURL
from .connection import OwnedDatabase
from .dict import ModelDict
from .models import DurableEntry
from .url import DatabaseURL

__all__ = ["open_url"]


def open_url(url: StoreURL) -> Factory:
    """The factory of a ``ModelDict`` on the ready ``DurableEntry`` table of the database ``url`` names,
    with a connection of its own."""
    query = dict(url.query)
    url.query.clear()
    try:
        database = DatabaseURL.from_parts(url.parts, query, url.error)
        # Say now that a driver is missing, not at open().
        importlib.import_module(database.driver)
    except ImportError as exc:
        raise url.missing_extra(exc) from exc
    name = url.keyspace or DEFAULT_KEYSPACE

    def make(opts: dict[str, Any]) -> Any:
        return ModelDict(DurableEntry, keyspace=name, database=OwnedDatabase(database), **opts)

    return make
