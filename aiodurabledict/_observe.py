"""Hooks for instrumentation (``aiodurabledict.otel``): nothing is done unless one is registered.

The core reports store calls (to time them and wrap them in spans) and events (syncs, full reloads,
notices applied, gaps, reconnects, rewinds); open dicts are listed for gauges (cache size,
staleness). With no instrumentation registered, a report is one truth test of an empty list.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ["Instrumentation", "Observed", "active", "event", "observed", "register", "span", "track"]


class Observed(Protocol):
    """What a gauge reads of an open dict."""

    @property
    def name(self) -> str: ...

    def size(self) -> int: ...

    def unconfirmed_for(self) -> float: ...


class Instrumentation(Protocol):
    """An instrumentation: wraps store calls and counts events, per dict ``name``."""

    def span(self, name: str, operation: str) -> AbstractContextManager[None]:
        """Around one store call: time it, trace it; an exception leaving it is the call's failure."""

    def event(self, name: str, kind: str) -> None:
        """One ``kind`` of event: ``sync``, ``reload``, ``notice``, ``gap``, ``reconnect``, ``rewind``."""


active: list[Instrumentation] = []
_tracked: weakref.WeakSet[Observed] = weakref.WeakSet()


def register(instrumentation: Instrumentation) -> None:
    """Start reporting to ``instrumentation``."""
    if instrumentation not in active:
        active.append(instrumentation)


def unregister(instrumentation: Instrumentation) -> None:
    """Stop reporting to ``instrumentation``."""
    if instrumentation in active:
        active.remove(instrumentation)


@contextlib.contextmanager
def _spans(name: str, operation: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for instrumentation in active:
            stack.enter_context(instrumentation.span(name, operation))
        yield


def span(name: str, operation: str) -> AbstractContextManager[None]:
    """A context manager around one store call (a no-op when nothing is registered)."""
    return _spans(name, operation) if active else contextlib.nullcontext()


def event(name: str, kind: str) -> None:
    """Report one event of dict ``name``."""
    for instrumentation in active:
        instrumentation.event(name, kind)


def track(dict_state: Observed) -> None:
    """List an open dict for the gauges (held weakly)."""
    _tracked.add(dict_state)


def untrack(dict_state: Observed) -> None:
    """Take a closed dict off the gauges."""
    _tracked.discard(dict_state)


def observed() -> list[Observed]:
    """The open dicts the gauges read."""
    return list(_tracked)
