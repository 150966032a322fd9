"""``ModelDict``: a dict kept in the table of a Tortoise model, and ``open_url_dict`` for URLs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._dict import AsyncDurableDict
from ..._types import DEFAULT_KEYSPACE
from .backend import TortoiseBackend
from .connection import OwnedDatabase
from .models import DurableEntry
from .url import DatabaseURL

if TYPE_CHECKING:
    import aiomcache
    from tortoise.context import TortoiseContext
    from tortoise.models import Model

    from .connection import Database

__all__ = ["ModelDict", "open_url_dict"]


class ModelDict(AsyncDurableDict[Any]):
    """A dict kept in the table of a Tortoise ``model``: one row per key.

    ``key_col`` names a unique string field, ``value_col`` a text or binary field. A model with a
    ``keyspace`` column (like the ready ``DurableEntry``) holds many dicts, one per ``keyspace=``;
    any other model holds one. ``cache`` is an ``aiomcache.Client`` that polls read instead of the
    database; give it to every dict that writes. Tortoise must be initialised by the application (the
    dict never does it): build the dict where the application's Tortoise context is current (or pass
    ``context=``). The other backend options are ``TortoiseBackend``'s; the rest are the dict's own.

    Raises ``ValueError`` when no Tortoise context is current, or the model cannot hold a dict.

    Usage::

        async with ModelDict(Setting, cache=aiomcache.Client("127.0.0.1")) as settings:
            await settings.set("feature_x", True)
    """

    def __init__(
        self,
        model: type[Model],
        *,
        key_col: str = "key",
        value_col: str = "value",
        cache: aiomcache.Client | None = None,
        keyspace: str | None = None,
        keyspace_col: str | None = None,
        name: str | None = None,
        cache_timeout: float = 0.25,
        confirm_interval: float = 10.0,
        log_keep: int = 1000,
        marker_key: str | None = None,
        connection: str | None = None,
        context: TortoiseContext | None = None,
        database: Database | None = None,
        **opts: Any,
    ) -> None:
        if model is DurableEntry and keyspace_col is None:
            keyspace_col = "keyspace"
        backend = TortoiseBackend.for_model(
            model,
            key_col=key_col,
            value_col=value_col,
            cache=cache,
            keyspace=keyspace,
            keyspace_col=keyspace_col,
            name=name,
            cache_timeout=cache_timeout,
            confirm_interval=confirm_interval,
            log_keep=log_keep,
            marker_key=marker_key,
            connection=connection,
            context=context,
            database=database,
        )
        super().__init__(backend, **opts)

    @property
    def backend(self) -> TortoiseBackend:
        """The backend, for its options and counters."""
        backend = self._backend
        assert isinstance(backend, TortoiseBackend)
        return backend


def open_url_dict(url: str, *, keyspace: str = DEFAULT_KEYSPACE, **opts: Any) -> ModelDict:
    """An unopened ``ModelDict`` on the ready ``DurableEntry`` table of ``sqlite:///file.db``,
    ``postgres://user@host:port/db`` or ``mysql://user@host:port/db``; it opens, and closes, a
    connection of its own. Raises ``ValueError`` for a malformed URL or an unknown option."""
    database = OwnedDatabase(DatabaseURL.parse(url))
    return ModelDict(DurableEntry, keyspace=keyspace, database=database, **opts)
