"""A ``BlockingDict`` dressed as the async dict the conformance suite drives, and the factory for it.

The adapter's awaitable methods run the blocking calls in a worker thread (``asyncio.to_thread``), as
async code calling into blocking code would. What the suite reads synchronously (``d[k]``, ``in``,
``len``, ``==``, ``d.view``, ``status``, ``version``, ``changes()``, ``backend``) goes to the dict
underneath: a blocking call inside the test's running loop would refuse, by design. Everything the
dict's store uses (clients, connections, Tortoise contexts) is made, used and closed on the blocking
dicts' shared loop, where the dicts run: the store's factory is entered and left there, and the
backend the suite calls directly is relayed there.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, Self, cast

from aiodurabledict import AsyncDurableDict, Backend, Change, Codec, Status
from aiodurabledict.blocking import BlockingDict, run
from aiodurabledict.testing.conformance import Factory

__all__ = ["BlockingAdapter", "blocking_factory", "on_shared_loop"]

_NO_DEFAULT: Any = object()


async def on_shared_loop(func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Await ``func(*args, **kwargs)`` on the blocking dicts' shared loop, from any event loop."""
    call = functools.partial(func, *args, **kwargs)

    async def once() -> Any:
        return await call()

    return await asyncio.to_thread(run, once)


class SharedLoopBackend:
    """The backend the suite reaches through ``d.backend``: attributes read through, and its
    awaitable methods run on the shared loop, where its client lives."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def relayed(*args: Any, **kwargs: Any) -> Any:
            return await on_shared_loop(attr, *args, **kwargs)

        return relayed


@functools.cache
def _relay_class(name: str) -> type[SharedLoopBackend]:
    """``SharedLoopBackend`` under the relayed backend's class name, which the suite's messages show."""
    return type(name, (SharedLoopBackend,), {})


class _Changes:
    """The dict's own change stream, consumed on the shared loop (where it is fed)."""

    def __init__(self, stream: AsyncIterator[Change[Any]]) -> None:
        self._stream = stream

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change[Any]:
        change: Change[Any] = await on_shared_loop(self._stream.__anext__)
        return change


class BlockingAdapter:
    """Looks like ``AsyncDurableDict`` to the suite; every awaitable call is a ``BlockingDict`` call
    made in a worker thread."""

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # as the dict: unhashable

    def __init__(self, inner: AsyncDurableDict[Any], *, autosync: bool = True) -> None:
        self._inner = inner
        self.blocking = BlockingDict(inner, autosync=autosync)

    def __repr__(self) -> str:
        return f"<BlockingAdapter {self.blocking!r}>"

    # -- lifecycle --

    async def open(self) -> Self:
        await asyncio.to_thread(self.blocking.open)
        return self

    async def aclose(self) -> None:
        await asyncio.to_thread(self.blocking.close)

    close = aclose

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the awaitable API, through the blocking dict --

    async def get(self, key: str, default: Any = None) -> Any:
        return await asyncio.to_thread(self.blocking.get, key, default)

    async def set(self, key: str, value: Any) -> None:
        await asyncio.to_thread(self.blocking.set, key, value)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.blocking.__delitem__, key)

    async def pop(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        if default is _NO_DEFAULT:
            return await asyncio.to_thread(self.blocking.pop, key)
        return await asyncio.to_thread(self.blocking.pop, key, default)

    async def setdefault(self, key: str, default: Any = None) -> Any:
        return await asyncio.to_thread(self.blocking.setdefault, key, default)

    async def update(
        self, mapping: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any
    ) -> None:
        await asyncio.to_thread(self.blocking.update, mapping, **kwargs)

    async def clear(self) -> None:
        await asyncio.to_thread(self.blocking.clear)

    async def compare_and_set(self, key: str, expected: Any, new: Any) -> bool:
        return await asyncio.to_thread(self.blocking.compare_and_set, key, expected, new)

    async def sync(self, *, strict: bool = True) -> bool:
        # The blocking sync() is always strict, which every caller of sync(strict=False) may get.
        return await asyncio.to_thread(self.blocking.sync)

    async def snapshot(self) -> dict[str, Any]:
        # durabledict's way to copy a dict: its items, read fresh.
        return await asyncio.to_thread(lambda: dict(self.blocking.items()))

    async def drop(self) -> None:
        await asyncio.to_thread(self.blocking.drop)

    # -- what the suite reads synchronously: the cache underneath --

    def __getitem__(self, key: str) -> Any:
        return self.blocking.view[key]

    def __contains__(self, key: object) -> bool:
        return key in self.blocking.view

    def __len__(self) -> int:
        return len(self.blocking.view)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.blocking.view))

    def __eq__(self, other: object) -> bool:
        return self._inner == other

    @property
    def view(self) -> Mapping[str, Any]:
        return self.blocking.view

    @property
    def version(self) -> int:
        return self.blocking.version

    @property
    def status(self) -> Status:
        return self.blocking.status

    @property
    def live(self) -> bool:
        return self.blocking.live

    @property
    def undecodable(self) -> frozenset[str]:
        return self._inner.undecodable

    @property
    def codec(self) -> Codec:
        return self._inner.codec

    @property
    def backend(self) -> Backend:
        inner = self._inner.backend
        return cast(Backend, _relay_class(type(inner).__name__)(inner))

    def changes(self) -> AsyncIterator[Change[Any]]:
        return _Changes(self._inner.changes())


StoreFactory = Callable[[Any], AbstractAsyncContextManager[Factory]]


@asynccontextmanager
async def blocking_factory(store: StoreFactory, request: Any) -> AsyncIterator[Factory]:
    """A store's conformance factory (a ``tests/stores`` param), entered and left on the shared loop,
    making ``BlockingAdapter``s: unopened dicts of that store seen through the blocking API."""
    entered = store(request)
    make: Factory = await on_shared_loop(entered.__aenter__)
    try:

        async def adapted(**opts: Any) -> AsyncDurableDict[Any]:
            inner: AsyncDurableDict[Any] = await on_shared_loop(make, **opts)
            return cast(AsyncDurableDict[Any], BlockingAdapter(inner, autosync=opts.get("autosync", True)))

        yield adapted
    finally:
        await on_shared_loop(entered.__aexit__, None, None, None)
