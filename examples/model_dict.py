"""ModelDict on a Tortoise model of your own: the application's table holds the settings.

Tortoise is set up as an application sets it up (its own models, and the library's two tables in
the same app); the dict is built after ``Tortoise.init``, where the Tortoise context is current.
A second dict on the library's ready ``DurableEntry`` table shows ``keyspace=``.

Run it: `python examples/model_dict.py` (a temporary SQLite file), or point it at a server:
`AIODURABLEDICT_DB=postgres://user:password@localhost:5432/app python examples/model_dict.py`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from tortoise import Tortoise, fields
from tortoise.models import Model

from aiodurabledict import ModelDict
from aiodurabledict.backends.tortoise_models import DurableEntry


class Setting(Model):
    """The application's own table: a unique string key column and a text value column."""

    name = fields.CharField(max_length=255, pk=True)
    data = fields.TextField()

    class Meta:
        table = "example_setting"


async def main(db_url: str) -> None:
    await Tortoise.init(
        db_url=db_url,
        # The library's tables (the version row and the change log) live beside the app's models.
        modules={"models": ["__main__", "aiodurabledict.backends.tortoise_models"]},
    )
    try:
        await Tortoise.generate_schemas()
        # key_col and value_col name the model's columns (defaults: "key" and "value").
        async with ModelDict(Setting, key_col="name", value_col="data") as settings:
            await settings.set("feature_x", True)
            await settings.update({"limit": 100, "theme": "dark"})
            print("settings:", dict(settings.items()))
            # The table holds one row per key, the value as JSON text.
            print("rows:    ", [(row.name, row.data) for row in await Setting.all().order_by("name")])

        # Several dicts in the library's ready table, told apart by keyspace.
        async with ModelDict(DurableEntry, keyspace="flags") as flags:
            await flags.set("new_checkout", False)
            print("flags:   ", dict(flags.items()))
    finally:
        await Tortoise.close_connections()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        # Tortoise's own URL: for SQLite, sqlite:// then the file's path (here an absolute one).
        asyncio.run(main(os.environ.get("AIODURABLEDICT_DB") or f"sqlite://{Path(folder) / 'app.db'}"))
