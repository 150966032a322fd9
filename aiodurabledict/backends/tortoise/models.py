"""The tables ``ModelDict`` keeps beside the data: a version row per dict and a log of changed keys.

Add this module to your Tortoise apps (``modules={"models": ["myapp.models",
"aiodurabledict.backends.tortoise_models"]}``, or ``aiodurabledict.backends.tortoise.models``) so that your schema generation or migrations create
them in the database that holds your model; a dict also creates any that is missing when it opens.
``DurableEntry`` is a ready key/value table for applications that have no model of their own: many
dicts share it, one ``keyspace`` each.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

__all__ = [
    "CHANGE_TABLE",
    "ENTRY_KEY_LENGTH",
    "ENTRY_TABLE",
    "VERSION_TABLE",
    "DictChange",
    "DictVersion",
    "DurableEntry",
]

#: Longest key ``DurableEntry`` holds, in characters (and so at least as many UTF-8 bytes).
ENTRY_KEY_LENGTH = 512


class DictVersion(Model):
    """One row per dict: its version (raised by one in every committed write) and its log horizon.

    ``horizon``: the log holds every change made after this version; older caches reload fully.
    ``token``: the commit token of ``version`` (it tells histories apart after a restore).
    ``store``: a random id made with the row; it names the NOTIFY channel and the memcached marker.
    ``secret``: signs the dict's notices; whoever can read this row can forge them.
    """

    name: fields.CharField[str] = fields.CharField(max_length=255, primary_key=True)
    version: fields.BigIntField = fields.BigIntField(default=0)
    horizon: fields.BigIntField = fields.BigIntField(default=0)
    token: fields.CharField[str | None] = fields.CharField(max_length=32, null=True)
    store: fields.CharField[str | None] = fields.CharField(max_length=32, null=True)
    secret: fields.CharField[str | None] = fields.CharField(max_length=64, null=True)

    class Meta:
        """Tortoise's options: the table's name."""

        table = "aiodurabledict_version"


class DictChange(Model):
    """A key changed (written or deleted) by the commit that raised dict ``name`` to ``version``,
    whose token is ``token``."""

    id: fields.BigIntField = fields.BigIntField(primary_key=True)
    name: fields.CharField[str] = fields.CharField(max_length=255)
    version: fields.BigIntField = fields.BigIntField()
    key: fields.TextField = fields.TextField()
    token: fields.CharField[str | None] = fields.CharField(max_length=32, null=True)

    class Meta:
        """Tortoise's options: the table's name, and the index a cache's catch-up query reads."""

        table = "aiodurabledict_change"
        indexes: tuple[Index, ...] = (
            Index(fields=("name", "version"), name="aiodurabledict_change_name_version"),
        )


class DurableEntry(Model):
    """A ready key/value table: ``ModelDict(DurableEntry, keyspace="settings")``."""

    id: fields.BigIntField = fields.BigIntField(primary_key=True)
    keyspace: fields.CharField[str] = fields.CharField(max_length=255)
    key: fields.CharField[str] = fields.CharField(max_length=ENTRY_KEY_LENGTH)
    value: fields.BinaryField[bytes] = fields.BinaryField()

    class Meta:
        """Tortoise's options: the table's name; a key is unique within its keyspace."""

        table = "aiodurabledict_entry"
        unique_together: tuple[tuple[str, str], ...] = (("keyspace", "key"),)


VERSION_TABLE: str = DictVersion._meta.db_table
CHANGE_TABLE: str = DictChange._meta.db_table
ENTRY_TABLE: str = DurableEntry._meta.db_table
