"""Backends wrapped for tests: the same store, with one thing changed (notices lost, or recorded).

Fault switches live here, never in the production backends: a wrapper forwards every call of the
``Backend`` protocol to the store it wraps, and is a ``PushBackend`` exactly when that store is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiodurabledict import Backend, Delta, PushBackend

__all__ = ["deaf", "spied"]


class _Relay:
    """Forwards the whole ``Backend`` protocol to ``inner``."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        # Anything outside the protocol (a backend's own options and counters) reads through.
        return getattr(self.inner, name)

    @property
    def max_key_bytes(self) -> int | None:
        return self.inner.max_key_bytes

    @property
    def max_value_bytes(self) -> int | None:
        return self.inner.max_value_bytes

    @property
    def poll_interval(self) -> float | None:
        return self.inner.poll_interval

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def load(self) -> Delta:
        return await self.inner.load()

    async def changes_since(self, version: int) -> Delta:
        return await self.inner.changes_since(version)

    async def set(self, key: str, value: bytes) -> Delta:
        return await self.inner.set(key, value)

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        return await self.inner.pop(key)

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        return await self.inner.setdefault(key, value)

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        return await self.inner.update(items)

    async def clear(self) -> Delta:
        return await self.inner.clear()

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        return await self.inner.compare_and_set(key, expected, new)


class _Deaf(_Relay):
    """Subscribes, but hears nothing: every notice is lost (the heartbeat must do all the work)."""

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Delta]]:
        assert isinstance(self.inner, PushBackend)
        async with self.inner.subscribe() as notices:

            async def none() -> AsyncIterator[Delta]:
                async for _ in notices:
                    pass
                return
                yield  # pragma: no cover - makes this an async generator

            yield none()


class _Spied(_Relay):
    """Records every notice its subscription yields, then hands it on."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.notices: list[Delta] = []

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Delta]]:
        assert isinstance(self.inner, PushBackend)
        async with self.inner.subscribe() as notices:

            async def recorded() -> AsyncIterator[Delta]:
                async for notice in notices:
                    self.notices.append(notice)
                    yield notice

            yield recorded()


def deaf(inner: Backend) -> Backend:
    """``inner`` with every notice lost (a plain relay when ``inner`` does not push)."""
    return _Deaf(inner) if isinstance(inner, PushBackend) else _Relay(inner)


def spied(inner: Backend) -> _Spied:
    """``inner`` recording the notices it yields in ``.notices`` (``inner`` must push)."""
    if not isinstance(inner, PushBackend):
        raise TypeError(f"{inner!r} does not push notices")
    return _Spied(inner)
