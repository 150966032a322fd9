"""``memory://[name]`` URLs: one in-process store per name and process."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from .._types import DEFAULT_KEYSPACE
from .._urls import Factory, StoreURL
from .memory import MemoryDict, MemoryStore

__all__ = ["open_url", "reset_stores"]

_stores: dict[str, MemoryStore] = {}


def reset_stores() -> None:
    """Forget every ``memory://NAME`` store of the process: the next URL of a name starts empty."""
    _stores.clear()


def open_url(url: StoreURL) -> Factory:
    """The factory of a ``MemoryDict`` on the process's store of that name."""
    url.refuse_unknown()
    named = unquote(url.parts.netloc + url.parts.path).strip("/")
    if named and url.keyspace is not None:
        raise url.error("the URL names its store twice (memory://NAME and ?keyspace=)")
    name = named or url.keyspace or DEFAULT_KEYSPACE

    def make(opts: dict[str, Any]) -> Any:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = MemoryStore()
        return MemoryDict(store, **opts)

    return make
