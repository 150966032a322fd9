"""Type-checked usage: mypy (strict) runs over this file; pytest imports it so that it stays valid.

Unparametrised dicts hold ``Any``, so the common case needs no annotation; a parametrised one gives
handlers a typed view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiodurabledict import MISSING, AsyncDurableDict, Change, MemoryDict, Missing, RawCodec


async def unannotated() -> None:
    async with MemoryDict() as d:
        await d.set("k", 1)
        value: Any = await d.get("k")
        view: Mapping[str, Any] = d.view
        assert value == view["k"]


async def typed(d: AsyncDurableDict[int]) -> int:
    changes = d.changes()
    await d.set("k", 1)
    got: int | None = await d.get("k")
    fallback: int | str = await d.get("other", "none")
    view: Mapping[str, int] = d.view
    async for change in changes:
        new: int | Missing = change.new
        if new is not MISSING:
            return new
    return (got or 0) + len(view) + len(str(fallback))


def describe(change: Change[int]) -> str:
    return f"{change.key}: {change.old!r} -> {change.new!r} at {change.version}"


def misspelt_options_do_not_type_check() -> None:
    # Options are typed: a misspelt or mistyped one is an error (the ignores must stay needed).
    MemoryDict(hearbeat=1.0)  # type: ignore[call-arg]
    MemoryDict(heartbeat="1")  # type: ignore[arg-type]
    MemoryDict(heartbeat=1.0, max_staleness=None, codec=RawCodec())


async def compare_and_set(d: AsyncDurableDict[int]) -> bool:
    return await d.compare_and_set("k", MISSING, 1) and await d.compare_and_set("k", 1, MISSING)
