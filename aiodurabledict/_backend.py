"""The seam between the dict and a store: bytes in, bytes out, and a version that only grows.

A backend knows nothing of codecs, caches or watchers. It answers five questions (``load``,
``changes_since`` and the four kinds of write) and, when the store can push, yields notices.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Backend", "Delta", "PushBackend"]


@dataclass(frozen=True, slots=True)
class Delta:
    """What a store says about its content at ``version``.

    ``changes`` maps each key to its bytes as of ``version``, or to ``None`` where the key is absent.

    - ``full``: ``changes`` is the whole content; a key it lacks is absent from the store.
    - otherwise ``changes`` holds every key that changed after ``prev`` up to ``version``. ``prev`` is
      the version this delta starts from, or ``None`` when the backend cannot tell (then the dict
      applies the values but does not move its version, and a later sync fills any gap).
    - ``complete=False`` (notices only): the notice says something changed at ``version`` but does
      not carry the values; the dict fetches them with ``changes_since``.
    """

    version: int
    changes: Mapping[str, bytes | None] = field(default_factory=dict)
    prev: int | None = None
    full: bool = False
    complete: bool = True


@runtime_checkable
class Backend(Protocol):
    """A durable store of bytes under string keys.

    Every committed write raises the store's version (an int that only grows) and returns a ``Delta``
    of exactly what it wrote. ``dense_versions`` says that each commit raises the version by exactly
    one, so that a notice whose ``prev`` is ahead of the cache reveals a lost notice.

    Errors: raise ``BackendError`` (``errors.map_exceptions`` builds it) for a failed or unreachable
    store; the dict wraps anything else a backend raises the same way.
    """

    @property
    def dense_versions(self) -> bool:
        """Each commit raises the version by exactly one."""

    @property
    def max_key_bytes(self) -> int:
        """The longest key the store takes, in UTF-8 bytes."""

    @property
    def max_value_bytes(self) -> int | None:
        """The largest encoded value the store takes; ``None`` for no limit of ours."""

    async def start(self) -> None:
        """Prepare what the store needs (scripts, tables); no loading. Called by ``open()``."""

    async def aclose(self) -> None:
        """Release what the backend made itself; never the client the user handed in."""

    async def load(self) -> Delta:
        """The whole content and its version, read atomically, as a ``full`` delta."""

    async def changes_since(self, version: int) -> Delta:
        """Every key changed after ``version``; a ``full`` delta when the store can no longer tell."""

    async def set(self, key: str, value: bytes) -> Delta:
        """Store ``value`` under ``key``."""

    async def pop(self, key: str) -> tuple[Delta, bytes] | None:
        """Remove ``key`` and return the bytes it held; ``None`` (nothing written) when absent."""

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        """Store ``value`` unless ``key`` exists, atomically; return the bytes now stored.

        When the key existed, the delta carries its current bytes with ``prev=None``.
        """

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        """Store every item in one atomic batch where the store allows it."""

    async def clear(self) -> Delta:
        """Remove every key; the delta maps each removed key to ``None``."""


@runtime_checkable
class PushBackend(Backend, Protocol):
    """A backend whose store pushes change notices."""

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Delta]]:
        """Enter to subscribe; iterate to receive notices until the subscription breaks.

        Entering returns once the subscription is live, so that the dict can check the version
        right after and miss nothing. A broken subscription raises from iteration (or ends it).
        """
