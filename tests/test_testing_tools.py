"""The tools applications get for their own tests: memory stores reset, values overridden."""

from __future__ import annotations

from aiodurabledict import open_dict
from aiodurabledict.testing import override, reset_memory_stores


async def test_memory_stores_can_be_reset() -> None:
    """A memory://NAME store lives as long as the process unless reset: then the name starts empty."""
    async with open_dict("memory://shared-name", watch=False) as d:
        await d.set("k", 1)
    async with open_dict("memory://shared-name", watch=False) as d:
        assert d["k"] == 1
    reset_memory_stores()
    async with open_dict("memory://shared-name", watch=False) as d:
        assert "k" not in d


async def test_the_memory_url_fixture_is_fresh(memory_url: str) -> None:
    """The plugin's memory_url names a store nobody else uses (first half of a pair)."""
    async with open_dict(memory_url, watch=False) as d:
        assert len(d) == 0
        await d.set("leak", True)


async def test_the_memory_url_fixture_is_fresh_again(memory_url: str) -> None:
    """(second half) Nothing from another test is in it."""
    async with open_dict(memory_url, watch=False) as d:
        assert "leak" not in d


async def test_override_sets_and_restores_through_the_store(memory_url: str) -> None:
    """override() writes its values for the block, then puts back the old ones and removes the
    keys that were absent; another dict on the store sees both."""
    async with open_dict(memory_url, watch=False) as d, open_dict(memory_url, watch=False) as other:
        await d.set("limit", 10)
        async with override(d, limit=0, feature_x=True) as same:
            assert same is d
            assert await other.get("limit") == 0
            assert await other.get("feature_x") is True
        assert d == {"limit": 10}
        assert await other.snapshot() == {"limit": 10}
