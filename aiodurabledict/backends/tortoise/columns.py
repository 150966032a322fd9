"""Where a dict lives in the user's model: its table and its key, value and keyspace columns, checked
once when the dict is built (no I/O)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tortoise import fields as tfields

if TYPE_CHECKING:
    from tortoise.models import Model

__all__ = ["TEXT_KEY_BYTES", "Columns", "quote"]

#: Longest key for a text key column without ``max_length``, in UTF-8 bytes (index entries are bounded).
TEXT_KEY_BYTES = 1024


def quote(name: str) -> str:
    """An SQL identifier in double quotes (SQLite, PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


class Columns:
    """The table, key, value and (optional) keyspace columns of ``model``.

    Raises ``ValueError`` or ``TypeError`` when the model cannot hold a dict: a key column that is not
    a unique string, a value column that is neither text nor binary, a keyspace column not unique
    together with the key.
    """

    def __init__(self, model: type[Model], key_col: str, value_col: str, keyspace_col: str | None) -> None:
        meta = model._meta
        fields_map = meta.fields_map

        def column(name: str, role: str) -> tuple[str, tfields.Field[Any]]:
            field = fields_map.get(name)
            if field is None:
                raise ValueError(f"{model.__name__} has no field {name!r} to use as the {role} column")
            return field.source_field or name, field

        self.table: str = meta.db_table
        self.schema: str | None = getattr(meta, "schema", None)
        key, key_field = column(key_col, "key")
        value, value_field = column(value_col, "value")
        self.key: str = key
        self.value: str = value
        if not isinstance(key_field, tfields.CharField | tfields.TextField):
            raise TypeError(
                f"the key column {key_col!r} of {model.__name__} must be a CharField or TextField"
            )
        if isinstance(value_field, tfields.BinaryField):
            self.binary: bool = True
        elif isinstance(value_field, tfields.CharField | tfields.TextField):
            self.binary = False
        else:
            raise TypeError(
                f"the value column {value_col!r} of {model.__name__} must be a TextField, CharField or BinaryField"
            )
        max_length = getattr(key_field, "max_length", None)
        # A limit in characters is one in bytes too (a character is at least one byte).
        self.max_key_bytes: int = int(max_length) if max_length else TEXT_KEY_BYTES
        value_length = getattr(value_field, "max_length", None)
        self.max_value_bytes: int | None = int(value_length) if value_length else None

        self.keyspace: str | None = None
        if keyspace_col is not None:
            self.keyspace, _ = column(keyspace_col, "keyspace")
        unique = {tuple(sorted(group)) for group in meta.unique_together}
        if keyspace_col is None and not (key_field.pk or key_field.unique):
            raise ValueError(
                f"the key column {key_col!r} of {model.__name__} must be unique (or the primary key)"
            )
        if keyspace_col is not None and tuple(sorted((keyspace_col, key_col))) not in unique:
            raise ValueError(f"{model.__name__} needs unique_together = (({keyspace_col!r}, {key_col!r}),)")

    def out(self, raw: Any) -> bytes:
        """A value as the column returned it, as bytes (text columns hold UTF-8)."""
        return bytes(raw) if self.binary else str(raw).encode("utf-8")
