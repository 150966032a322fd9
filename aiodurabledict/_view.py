"""The synchronous cached view every dict offers: mapping reads of the cache, never any I/O."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Generic

from typing_extensions import TypeVar

from ._cache import Cache, Entries, Items, Keys, Values

__all__ = ["CachedView"]

V = TypeVar("V", default=Any)


class CachedView(Generic[V]):
    """``d[k]``, ``k in d``, ``len(d)``, iteration, ``keys()``/``values()``/``items()``, ``==``,
    ``d.view``, ``d.version``: reads of the local cache. A dict subclasses it and sets the three
    attributes below when it is built."""

    _cache: Cache
    _data: Entries
    _view: Mapping[str, V]

    def __getitem__(self, key: str) -> V:
        value: V = self._data[key]
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def keys(self) -> Keys:
        """The keys, set-like; iterating takes a snapshot, so awaiting inside the loop is safe."""
        return Keys(self._data)

    def values(self) -> Values:
        """The values (undecodable entries left out), iterated over a snapshot."""
        return Values(self._data)

    def items(self) -> Items:
        """The ``(key, value)`` pairs (undecodable entries left out), iterated over a snapshot."""
        return Items(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CachedView):
            return dict.__eq__(self._data, other._data)
        if isinstance(other, Mapping):
            return dict.__eq__(self._data, dict(other))
        return NotImplemented

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # mutable: unhashable, as dict is

    @property
    def view(self) -> Mapping[str, V]:
        """A live, read-only mapping of the cache; as fast to read as a dict. Never does I/O."""
        return self._view

    @property
    def version(self) -> int:
        """The store version the cache reflects.

        It grows with every change the cache applies, the dict's own writes included. When the store
        goes back in time (it lost writes, or was restored) the cache reloads and this becomes the
        store's, lower, version; that is logged as a warning, never silent.
        """
        return self._cache.version

    @property
    def undecodable(self) -> frozenset[str]:
        """Keys whose stored value the codec could not decode (reading them raises ``DecodeError``)."""
        return frozenset(self._data.bad)
