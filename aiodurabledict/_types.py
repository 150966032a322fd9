"""Small public value types: the ``MISSING`` marker, ``Change`` and ``Status``."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Final, Generic, TypedDict, TypeVar

from ._codecs import Codec

__all__ = ["DEFAULT_KEYSPACE", "MISSING", "Change", "DictOptions", "Missing", "Status"]

#: The dict a URL or a model with a keyspace column names when it names none.
DEFAULT_KEYSPACE = "default"

V = TypeVar("V")


class Missing(enum.Enum):
    """The type of ``MISSING``: a key that was absent, or has been deleted."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = Missing.MISSING


@dataclass(frozen=True, slots=True)
class Change(Generic[V]):
    """One key's change, as the cache applied it. ``old``/``new`` is ``MISSING`` where the key was absent.

    ``lost``: non-zero only on the marker a change stream sends when its consumer fell behind its
    buffer: that many changes were dropped (``key`` is then ``""``, never a real key); the consumer
    should take ``await d.snapshot()`` and go on from there.
    """

    key: str
    old: V | Missing
    new: V | Missing
    version: int
    lost: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    """Where the cache stands against the store.

    ``connected``: the watcher follows the store live (or, without a watcher, the last check succeeded).
    ``stale_since``: wall-clock time (``time.time()``) since which the cache may be stale; ``None`` while
    connected. ``error``: the last failure's type and message; never a value.
    """

    open: bool
    watching: bool
    connected: bool
    since: float
    stale_since: float | None
    version: int
    error: str | None = None

    @property
    def stale_for(self) -> float:
        """Seconds the cache has gone unconfirmed (0.0 while connected)."""
        return 0.0 if self.stale_since is None else max(0.0, time.time() - self.stale_since)


class DictOptions(TypedDict, total=False):
    """The dict's own options, typed once for every constructor and ``open_dict`` (see
    ``AsyncDurableDict`` for what each means)."""

    codec: Codec
    autosync: bool
    watch: bool
    max_staleness: float | None
    heartbeat: float
    poll_interval: float | None
    timeout: float
