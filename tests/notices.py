"""Watching what a dict's watcher hands it, for tests that must tell push from polling."""

from __future__ import annotations

from typing import Any

from aiodurabledict import AsyncDurableDict, Delta


def spy_notices(d: AsyncDurableDict[Any]) -> list[Delta]:
    """Record every notice ``d`` receives from now on (it still applies them); returns the record."""
    seen: list[Delta] = []
    on_notice = d._on_notice

    def spy(delta: Delta) -> None:
        seen.append(delta)
        on_notice(delta)

    d._on_notice = spy  # type: ignore[method-assign]
    return seen
