"""``sqlite://``, ``postgres://`` and ``mysql://`` URLs, parsed once into a ``DatabaseURL``, from which
the dict makes (at ``open()``) a Tortoise client of its own.

``sqlite:///relative.db`` is relative to the working directory, ``sqlite:////absolute.db`` absolute
(three slashes and a path; Tortoise's own URLs read ``sqlite:///data/x.db`` as absolute).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from ..._urls import join, redact

if TYPE_CHECKING:
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["SQLITE_OPTIONS", "DatabaseURL"]

#: The options a ``sqlite://`` URL takes: each becomes a PRAGMA of the dict's own connection.
SQLITE_OPTIONS = frozenset(
    {"journal_mode", "journal_size_limit", "synchronous", "busy_timeout", "foreign_keys"}
)
_KINDS = {"sqlite": "sqlite", "postgres": "postgres", "postgresql": "postgres", "mysql": "mysql"}
# The Tortoise client class of each kind, imported when a dict opens.
_CLIENTS = {
    "sqlite": ("tortoise.backends.sqlite.client", "SqliteClient"),
    "postgres": ("tortoise.backends.asyncpg.client", "AsyncpgDBClient"),
    "mysql": ("tortoise.backends.mysql.client", "MySQLClient"),
}
_CONNECTION_NAME = "aiodurabledict"


@dataclass(frozen=True)
class DatabaseURL:
    """A database URL, parsed: its ``kind`` (``sqlite``, ``postgres`` or ``mysql``) and the arguments
    of the Tortoise client that reaches it. ``redacted`` names it in messages, without credentials."""

    kind: str
    redacted: str
    arguments: Mapping[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, url: str) -> DatabaseURL:
        """Parse ``url``; ``ValueError`` (credentials masked) when it is malformed."""
        try:
            parts = urlsplit(url.strip())
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"malformed database URL {redact(url)!r}: {exc}") from None
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in query:
                raise ValueError(f"option {name!r} given twice in database URL {redact(url)!r}")
            query[name] = value
        return cls.from_parts(
            parts, query, lambda message: ValueError(f"{message} (database URL {redact(url)!r})")
        )

    @classmethod
    def from_parts(
        cls, parts: SplitResult, query: Mapping[str, str], error: Callable[[str], ValueError]
    ) -> DatabaseURL:
        """From a URL already split (``open_dict`` parses it once); ``query`` holds the store's options."""
        scheme = parts.scheme.lower()
        kind = _KINDS.get(scheme)
        if kind is None:
            raise error(f"ModelDict opens sqlite://, postgres:// and mysql:// URLs, not {scheme}://")
        redacted = redact(join(parts.scheme, parts.netloc, parts.path, parts.query))
        if kind == "sqlite":
            return cls(kind, redacted, _sqlite_arguments(parts, query, error))
        if not parts.hostname and not parts.path.strip("/"):
            raise error(f"the {scheme}:// URL names no host or database")
        return cls(kind, redacted, _server_arguments(kind, parts, query, error))

    @property
    def driver(self) -> str:
        """The module of the Tortoise client this kind of database needs (importing it checks the
        driver is installed)."""
        return _CLIENTS[self.kind][0]

    def missing_folder(self) -> str | None:
        """For an SQLite file whose folder does not exist, what to say (naming the URL's other
        form, which may be what was meant); ``None`` otherwise. Touches the file system."""
        if self.kind != "sqlite":
            return None
        path = str(self.arguments["file_path"])
        folder = os.path.dirname(path)
        if not folder or os.path.isdir(folder):
            return None
        if os.path.isabs(path):
            other = f"for {path.lstrip('/')} in the working directory write sqlite:///{path.lstrip('/')}"
        else:
            other = f"for the absolute path /{path} write sqlite:////{path}"
        return (
            f"the folder {folder!r} of {self.redacted} does not exist (sqlite:///path is relative to"
            f" the working directory, {os.getcwd()}, and sqlite:////path absolute: {other})"
        )

    def client(self) -> BaseDBAsyncClient:
        """A new Tortoise client for this database (no I/O until it is used)."""
        module, name = _CLIENTS[self.kind]
        client_class = getattr(importlib.import_module(module), name)
        client: BaseDBAsyncClient = client_class(connection_name=_CONNECTION_NAME, **self.arguments)
        return client


def _sqlite_arguments(
    parts: SplitResult, query: Mapping[str, str], error: Callable[[str], ValueError]
) -> dict[str, Any]:
    if parts.netloc:
        raise error("the sqlite URL has a host; use sqlite:///relative.db or sqlite:////absolute.db")
    path = unquote(parts.path)[1:]
    if not path.strip("/"):
        raise error("the sqlite URL names no file (sqlite:///file.db)")
    unknown = sorted(set(query) - SQLITE_OPTIONS)
    if unknown:
        raise error(
            f"unknown sqlite option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(SQLITE_OPTIONS))}"
        )
    for name, value in query.items():
        # They become PRAGMA statements: keep them to plain words.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise error(f"bad value for sqlite option {name!r}: expected a plain word or number")
    return {"file_path": path, **query}


def _server_arguments(
    kind: str, parts: SplitResult, query: Mapping[str, str], error: Callable[[str], ValueError]
) -> dict[str, Any]:
    """The client arguments of a PostgreSQL or MySQL URL, typed as Tortoise's own URL parser types them."""
    from tortoise.backends.base.config_generator import DB_LOOKUP

    lookup = DB_LOOKUP["asyncpg" if kind == "postgres" else "mysql"]
    arguments: dict[str, Any] = dict(lookup["defaults"])
    for name, value in query.items():
        try:
            arguments[name] = lookup["cast"].get(name, str)(value)
        except ValueError:
            raise error(f"bad value for option {name!r}") from None
    password = unquote(parts.password) if parts.password is not None else None
    arguments.update(
        host=parts.hostname,
        user=unquote(parts.username) if parts.username else None,
        # asyncpg takes None (then reads the environment); the MySQL drivers want a string.
        password=password if password or kind == "mysql" else None,
        database=unquote(parts.path[1:]) or None,
    )
    if kind == "mysql" and arguments["password"] is None:
        arguments["password"] = ""
    if parts.port:
        arguments["port"] = parts.port
    return arguments
