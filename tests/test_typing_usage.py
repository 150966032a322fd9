"""The type-checked usage module runs, so its examples stay true at run time too."""

from __future__ import annotations

from aiodurabledict import MemoryDict
from tests import typing_usage


async def test_typed_usage_runs() -> None:
    """The unannotated and typed examples behave as their annotations say."""
    await typing_usage.unannotated()
    async with MemoryDict[int](watch=False) as d:
        assert await typing_usage.typed(d) == 1
