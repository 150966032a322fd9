"""The cache and the rules that move it: a copy of the store's content at one (version, token).

No I/O and no asyncio. ``Cache.apply`` takes any ``Delta`` a store gave and either applies it or says
why not (``Outcome``); the sync layer acts on that (checks the store, or reloads everything). The
cache only ever moves along the history it follows: a range is applied only when it starts exactly
at the cache's version and token, so a lost notice, a forged one or another history's can never be
applied, and a cache never holds a value whose version it cannot name.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from typing import Any, ClassVar

from ._backend import Delta
from ._codecs import Codec
from ._types import MISSING, Change
from .errors import DecodeError, NotOpenError

__all__ = ["Cache", "Entries", "ForkedEntries", "Items", "Keys", "OrphanedEntries", "Outcome", "Values"]

# Versions lately moved to, with their tokens: tells a late answer about a version already passed
# (same commit: nothing to do) from one of another history (reload).
_RECENT = 256
_UNKNOWN: Any = object()


class Outcome(enum.Enum):
    """What ``Cache.apply`` did with a delta."""

    #: The cache moved to the delta's version.
    APPLIED = "applied"
    #: The store went back in time: the cache took its whole, older or other, content.
    REWOUND = "rewound"
    #: The cache already was at this state.
    CURRENT = "current"
    #: The delta is about a state the cache has passed: nothing to do.
    STALE = "stale"
    #: The store is ahead of the cache in a way this delta cannot fill: ask the store.
    BEHIND = "behind"
    #: The store's history is not the one the cache followed: reload everything.
    DIVERGED = "diverged"


def _same(a: str | None, b: str | None) -> bool:
    """Tokens agree, or one side keeps none (then the version alone is trusted)."""
    return a is None or b is None or a == b


class Entries(dict[str, Any]):
    """The cached values; a key whose stored value cannot be decoded raises ``DecodeError`` on lookup."""

    __slots__ = ("bad",)

    def __init__(self) -> None:
        super().__init__()
        self.bad: dict[str, str] = {}

    def __missing__(self, key: str) -> Any:
        reason = self.bad.get(key)
        if reason is not None:
            raise DecodeError(key, reason)
        raise KeyError(key)


class _Refusing(Entries):
    """Entries that refuse every read: swapped in (``__class__``) where the cache must not be served.

    Swapping the class leaves the hot path of healthy dicts untouched and reaches every view and
    proxy already handed out, since they all hold this very object.
    """

    __slots__ = ()
    reason: ClassVar[str] = ""

    def _refuse(self, *_args: object) -> Any:
        raise NotOpenError(self.reason)

    __getitem__ = __contains__ = __len__ = __iter__ = _refuse
    get = keys = values = items = _refuse


class ForkedEntries(_Refusing):
    """The cache of a dict opened in a parent process, as a forked child sees it."""

    __slots__ = ()
    reason = "this dict was opened in a parent process; open a new dict after the fork"


class OrphanedEntries(_Refusing):
    """The cache of a dict whose event loop ended while it was open."""

    __slots__ = ()
    reason = "the event loop this dict was opened in has ended; open a new dict in this loop"


class Keys(KeysView[str]):
    """``d.keys()``: a set-like view that iterates over a snapshot (safe across awaits)."""

    __slots__ = ()
    _mapping: Entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._mapping))


class Values(ValuesView[Any]):
    """``d.values()``: iterates over a snapshot of the values."""

    __slots__ = ()
    _mapping: Entries

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._mapping.values()))


class Items(ItemsView[str, Any]):
    """``d.items()``: iterates over a snapshot of the pairs."""

    __slots__ = ()
    _mapping: Entries

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self._mapping.items()))


class Cache:
    """The store's content at ``version`` (commit ``token``), decoded, and the rules that move it.

    ``dirty``: the cache holds values its version does not explain (a write whose commit could not be
    placed, because the store could not be asked what came before it); the next check reloads.
    ``listeners`` are called with each ``Change`` applied, in order.
    """

    def __init__(self, codec: Codec) -> None:
        self.data = Entries()
        self.codec = codec
        self.version = 0
        self.token: str | None = None
        self.loaded = False
        self.dirty = False
        #: Changes applied so far (each key that took a new value or went away).
        self.changes = 0
        #: Times the store was found to have gone back in time.
        self.rewinds = 0
        self.listeners: list[Callable[[Change[Any]], None]] = []
        self._recent: OrderedDict[int, str | None] = OrderedDict()

    def reset(self) -> None:
        """Forget everything (a dict being opened again)."""
        self.data.clear()
        self.data.bad.clear()
        self.version = 0
        self.token = None
        self.loaded = self.dirty = False
        self._recent.clear()

    # -- applying --------------------------------------------------------------------------------

    def apply(self, delta: Delta, *, asked: int | None = None) -> Outcome:
        """Apply ``delta`` if it follows the cache's history; otherwise say what is needed.

        ``asked``: the cache's version when the request that brought ``delta`` was sent; a full
        delta older than that means the store went back in time.
        """
        if delta.full:
            return self._apply_full(delta, asked)
        if not self.loaded:
            return Outcome.BEHIND
        if not delta.complete:
            return Outcome.BEHIND if delta.version > self.version else Outcome.STALE
        if delta.prev is None:
            return self._apply_reading(delta)
        return self._apply_range(delta)

    def force(self, delta: Delta) -> None:
        """Show what a write stored although it could not be placed in the history: read your writes.

        The cache is then ``dirty`` until a reload.
        """
        for key, raw in delta.changes.items():
            self._put(key, raw, delta.version)
        self.dirty = True

    def _apply_full(self, delta: Delta, asked: int | None) -> Outcome:
        if not self.loaded or self.dirty or delta.version > self.version:
            self._replace(delta)
            return Outcome.APPLIED
        if delta.version == self.version:
            if _same(delta.token, self.token):
                self._adopt(delta.token)
                return Outcome.CURRENT
            self._replace(delta, rewound=True)
            return Outcome.REWOUND
        known = self._recent.get(delta.version, _UNKNOWN)
        if (asked is not None and delta.version < asked) or (
            known is not _UNKNOWN and not _same(known, delta.token)
        ):
            # Asked for what came after `asked`, the store answered with all it has, older: it went back.
            self._replace(delta, rewound=True)
            return Outcome.REWOUND
        return Outcome.STALE

    def _apply_range(self, delta: Delta) -> Outcome:
        if delta.prev == self.version:
            if not _same(delta.prev_token, self.token):
                return Outcome.DIVERGED
            if delta.version == delta.prev:
                if not _same(delta.token, self.token):
                    return Outcome.DIVERGED
                self._adopt(delta.token)
                return Outcome.CURRENT
            if delta.version < delta.prev:
                return Outcome.BEHIND
            for key, raw in delta.changes.items():
                self._put(key, raw, delta.version)
            self._move(delta.version, delta.token)
            return Outcome.APPLIED
        if delta.version <= self.version:
            return self._passed(delta)
        return Outcome.BEHIND

    def _apply_reading(self, delta: Delta) -> Outcome:
        if delta.version > self.version:
            return Outcome.BEHIND
        if delta.version < self.version:
            return self._passed(delta)
        if not _same(delta.token, self.token):
            return Outcome.DIVERGED
        for key, raw in delta.changes.items():
            self._put(key, raw, delta.version)
        return Outcome.CURRENT

    def _passed(self, delta: Delta) -> Outcome:
        """A delta at a version the cache has passed: the same commit, another history, or unknown."""
        known = self._recent.get(delta.version, _UNKNOWN)
        if known is _UNKNOWN:
            return Outcome.STALE
        return Outcome.CURRENT if _same(known, delta.token) else Outcome.DIVERGED

    def _replace(self, delta: Delta, *, rewound: bool = False) -> None:
        """Take the whole content of a full delta; add and replace before removing, so that a reader
        in another thread never sees a key present before and after go missing."""
        version = delta.version
        data = self.data
        if not self.loaded and not data and not data.bad and not self.listeners:
            # The first load: nothing to compare, nobody listening; keep it a tight loop.
            codec = self.codec
            for key, raw in delta.changes.items():
                if raw is None:
                    continue
                try:
                    data[key] = codec.decode(raw)
                except Exception as exc:  # noqa: BLE001 - any codec failure marks the key, not the load
                    data.bad[key] = f"{type(exc).__name__}: {exc}"
        else:
            changes = delta.changes
            for key, raw in changes.items():
                if raw is not None:
                    self._put(key, raw, version)
            for key in [k for k in (*data, *data.bad) if changes.get(k) is None]:
                self._put(key, None, version)
        self.loaded = True
        self.dirty = False
        if rewound:
            self.rewinds += 1
            self._recent.clear()
        self._move(version, delta.token)

    def _adopt(self, token: str | None) -> None:
        if self.token is None and token is not None:
            self.token = token
            self._recent[self.version] = token

    def _move(self, version: int, token: str | None) -> None:
        self.version = version
        self.token = token
        recent = self._recent
        recent[version] = token
        recent.move_to_end(version)
        if len(recent) > _RECENT:
            recent.popitem(last=False)

    def _put(self, key: str, raw: bytes | None, version: int) -> None:
        data = self.data
        old: Any = data.get(key, MISSING)
        if raw is None:
            if old is MISSING and key not in data.bad:
                return
            data.pop(key, None)
            data.bad.pop(key, None)
            new: Any = MISSING
        else:
            try:
                new = self.codec.decode(raw)
            except Exception as exc:  # noqa: BLE001 - any codec failure marks the key, not the load
                # One bad value must not stop the rest: remember why, raise when it is read.
                data.pop(key, None)
                data.bad[key] = f"{type(exc).__name__}: {exc}"
                self.changes += 1
                return
            data.bad.pop(key, None)
            data[key] = new
            if old is not MISSING and type(old) is type(new) and old == new:
                return
        self.changes += 1
        if self.listeners:
            change: Change[Any] = Change(key, old, new, version)
            for listener in self.listeners:
                listener(change)
