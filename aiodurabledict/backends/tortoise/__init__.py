"""``ModelDict``: a dict kept in a database table through Tortoise ORM (SQLite, PostgreSQL, MySQL).

The database is the source of truth for the version: a row per dict in ``aiodurabledict_version``,
raised by one in the same transaction as every write, which also logs each changed key in
``aiodurabledict_change``. A cache catches up in one query, flat in the table's size. memcached, when
given, holds the latest commit (version and token) that ``sync()`` and polls read instead of the
database; it is only a hint. PostgreSQL also pushes each commit by a signed NOTIFY.

Every commit records a token beside the version (in the version row and in the log), so that a cache
can tell the history it followed from another one (a restored backup) even where versions repeat.

The modules: ``dict`` (``ModelDict``, ``open_url_dict``), ``backend`` (``TortoiseBackend``, and
``PostgresBackend``, which also pushes), ``dialect`` (what every database shares) and one module per
database (``sqlite``, ``postgres``, ``mysql``; ``standard`` holds the SQL SQLite and PostgreSQL share),
``connection`` (the application's context or a database of the dict's own), ``marker`` (memcached),
``listener`` and ``notices`` (PostgreSQL LISTEN/NOTIFY), ``models`` (the library's tables), ``url``
(``sqlite://``, ``postgres://``, ``mysql://``). Workarounds for a driver's behaviour live in a module
named after it (``_aiosqlite``, ``_asyncpg``, ``_aiomcache``).

- A text value column stores the value's UTF-8 text; bytes that are not UTF-8 raise ``EncodeError``
  (use a ``BinaryField``, or ``RawCodec`` with a binary column).
- Write to the table only through dicts: a row changed behind their back is not logged and reaches
  other caches only when they reload. Other columns of your model need database defaults (or NULL).
"""

from __future__ import annotations

try:
    import tortoise  # noqa: F401 - fail here, with the extra to install, when Tortoise is missing
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"ModelDict needs the 'tortoise' extra (missing module {_exc.name!r}): "
        "pip install 'aiodurabledict[tortoise]'",
        name=_exc.name,
    ) from _exc

from .backend import PostgresBackend, TortoiseBackend
from .dict import ModelDict, open_url_dict

__all__ = ["ModelDict", "PostgresBackend", "TortoiseBackend", "open_url_dict"]
