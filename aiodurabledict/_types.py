"""Small public value types: the ``MISSING`` marker, ``Change`` and ``Status``."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypedDict, TypeVar

from ._codecs import Codec

__all__ = ["DEFAULT_KEYSPACE", "MISSING", "Change", "DictOptions", "Health", "Missing", "Status"]

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


class Health(enum.Enum):
    """Where a dict stands, at a glance."""

    #: Opening, or open and not yet followed by its watcher.
    INITIALIZING = "initializing"
    #: Followed: a push watcher live, or polls (or, without a watcher, the last check) succeeding.
    LIVE = "live"
    #: The store or its notices are out of reach: the last known values are served.
    INTERRUPTED = "interrupted"
    #: Interrupted for longer than ``max_staleness``: reads that check raise ``StaleError``.
    STALE = "stale"
    #: Closed (or unusable: forked away, or its event loop ended).
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Status:
    """Where the cache stands against the store.

    ``state``: the ``Health`` at a glance, since ``since`` (``time.time()``). ``connected``: the
    watcher follows the store (or, without a watcher, the last check succeeded). ``stale_since``:
    wall-clock time since which the cache may be stale; ``None`` while connected. ``error``: the
    last failure's type and message (the cause of an interruption); never a value.
    """

    open: bool
    watching: bool
    connected: bool
    since: float
    stale_since: float | None
    version: int
    error: str | None = None
    state: Health = Health.INITIALIZING

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
    bootstrap: Mapping[str, Any] | None
    snapshot: str | os.PathLike[str] | None
