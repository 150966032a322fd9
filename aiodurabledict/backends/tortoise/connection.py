"""Where a dict's table is reached: the application's Tortoise context (captured when the dict is
built), or a database the dict opens and closes itself (``open_dict`` URLs). Either knows its kind
of database before any I/O, so that the dict's dialect and its push are decided when it is built.

The dict never initialises Tortoise nor touches model metadata: it talks to the context's connection
through the driver, so that the watcher works from any task and never joins, nor waits for, an
application transaction on PostgreSQL or MySQL.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from tortoise.context import TortoiseContext, get_current_context

from ...errors import BackendError
from .dialect import DIALECT_KINDS, dialect_for

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient
    from tortoise.models import Model

    from .url import DatabaseURL

__all__ = ["AppDatabase", "Database", "OwnedDatabase"]


class Database(Protocol):
    """The database of one dict: its kind (``sqlite``, ``postgres``, ``mysql``) and its client."""

    @property
    def kind(self) -> str: ...

    def client(self) -> BaseDBAsyncClient:
        """The Tortoise client to run statements on (never a transaction's wrapper)."""

    async def open(self) -> None:
        """Make what the dict owns (nothing, for the application's database)."""

    async def aclose(self) -> None:
        """Close what ``open()`` made; never the application's connections."""


def _alias_of(model: type[Model], context: TortoiseContext) -> str | None:
    """The connection ``model`` uses in ``context``.

    Model metadata is shared by every context of the process, so it is trusted only when this
    context registered the model; an unregistered model (the ready table) uses the default connection.
    """
    apps = context.apps
    if apps is not None and any(m is model for m in apps.get_models_iterable()):
        return model._meta.default_connection
    return context.default_connection


class AppDatabase:
    """The application's connection for ``model``, in the Tortoise ``context`` current when built.

    Raises ``ValueError`` when no context is current (Tortoise is not initialised yet) or the model
    is bound to no connection.
    """

    def __init__(self, model: type[Model], context: TortoiseContext | None, alias: str | None) -> None:
        found = context if context is not None else get_current_context()
        if found is None:
            raise ValueError(
                "no Tortoise context is active: initialise Tortoise before building the dict "
                "(or pass context=)"
            )
        self._context = found
        bound = alias or _alias_of(model, found)
        if bound is None:
            raise ValueError(f"{model.__name__} is bound to no Tortoise connection; is it registered?")
        self.alias: str = bound
        # Making the client does no I/O; its class says what database it reaches, and through what.
        client = self._context.connections.get(self.alias)
        kind: str = client.capabilities.dialect
        if kind == "postgres" and not type(client).__module__.startswith("tortoise.backends.asyncpg"):
            kind = f"postgres through {type(client).__name__}"
        self._kind = kind
        # Whether the dict shares the application's one connection (SQLite), so that it must not run
        # inside the application's open transaction; the dialect says (an unknown kind is refused
        # when the backend is built).
        self._one_connection = dialect_for(kind).one_connection if kind in DIALECT_KINDS else False

    @property
    def kind(self) -> str:
        """The client's dialect (``sqlite``, ``postgres``, ``mysql``); PostgreSQL through another
        driver than asyncpg says which."""
        return self._kind

    def __repr__(self) -> str:
        return f"connection {self.alias!r}"

    async def open(self) -> None:
        """Nothing to make: the connection is the application's."""

    async def aclose(self) -> None:
        """Nothing to close: the connection is the application's."""

    def client(self) -> BaseDBAsyncClient:
        """The context's client for this connection: the connection itself, never a transaction's wrapper."""
        client = self._context.connections.get(self.alias)
        # Inside an application transaction the context hands out its wrapper; use the connection itself.
        while getattr(client, "_parent", None) is not None and client._parent is not client:
            if self._one_connection and not getattr(client, "_finalized", True):
                # One connection, locked by that transaction until it ends: waiting would never end.
                raise BackendError(
                    "on SQLite a dict cannot be used inside an open Tortoise transaction of the same task "
                    "(they share one connection); use it before or after the transaction"
                )
            client = client._parent
        return client


class OwnedDatabase:
    """A database the dict reaches with a client of its own, made at ``open()`` and closed at ``aclose()``."""

    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self._client: BaseDBAsyncClient | None = None

    @property
    def kind(self) -> str:
        """The URL's kind of database."""
        return self.url.kind

    def __repr__(self) -> str:
        return repr(self.url.redacted)

    async def open(self) -> None:
        """Make the client (no I/O until its first statement); an SQLite file's missing folder is
        named here, with the URL's other form, rather than as the driver's "unable to open"."""
        if self._client is None:
            missing = await asyncio.to_thread(self.url.missing_folder)
            if missing is not None:
                raise BackendError(missing)
            self._client = self.url.client()

    async def aclose(self) -> None:
        """Close the client, if open."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    @property
    def opened(self) -> bool:
        """Whether the dict's own client exists (between ``open()`` and ``aclose()``)."""
        return self._client is not None

    def client(self) -> BaseDBAsyncClient:
        """The dict's own client; ``BackendError`` when it is closed."""
        if self._client is None:
            raise BackendError(f"the connection to {self.url.redacted} is closed")
        return self._client
