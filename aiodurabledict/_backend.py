"""The seam between the dict and a store: bytes in, bytes out, and versions with an identity.

A backend knows nothing of codecs, caches or watchers. It answers the reads (``load``,
``changes_since``) and the writes, each with a ``Delta``, and, when the store can push, yields notices.

Every commit raises the store's version and carries a *token*: a random name the writer gives that
commit (``new_token()``), kept beside the version, in the change log and in notices. A version alone
cannot tell two histories apart: a store that went back in time (a failover to a lagging replica, a
restored backup) and moved on reuses version numbers. A token can: a cache compares the store's token
at its own version with its own and reloads everything when they differ.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Backend", "Delta", "DroppableBackend", "KeyReader", "PushBackend", "new_token"]


def new_token() -> str:
    """A fresh commit token: 16 random hex digits (64 bits), the same for every store."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Delta:
    """What a store says about its content at ``version`` (whose commit token is ``token``).

    ``changes`` maps keys to their bytes as of ``version``, or to ``None`` where the key is absent.
    A delta is one of four kinds:

    - ``full=True``: ``changes`` is the whole content; a key it lacks is absent from the store.
    - a *range* (``prev`` is an int): ``changes`` holds every key that changed after ``prev`` up to
      ``version``, and ``prev_token`` is the store's token at ``prev``. A commit is the range its
      write made; ``changes_since(v)`` answers the range from ``v`` (``prev == version`` when
      nothing changed).
    - a *reading* (``prev is None``): the store held these values at ``version``; nothing was
      written (what ``setdefault`` found, what ``pop`` found absent, what a failed
      ``compare_and_set`` found).
    - ``complete=False`` (notices only): something changed at ``version``; the values must be fetched.

    ``token``/``prev_token`` are ``None`` where the store keeps no identity for that version; the
    dict then trusts the version alone.
    """

    version: int
    changes: Mapping[str, bytes | None] = field(default_factory=dict)
    prev: int | None = None
    full: bool = False
    complete: bool = True
    token: str | None = None
    prev_token: str | None = None


@runtime_checkable
class Backend(Protocol):
    """A durable store of bytes under string keys.

    Every committed write raises the store's version (an int that only grows within one history),
    records the token it was given, and returns the ``Delta`` it committed. Writes that change
    nothing (``pop`` of an absent key, ``setdefault`` of a present one, a failed
    ``compare_and_set``) return a reading at the version the store answered at.

    Errors: map the store client's own failures, by name, to ``BackendError`` where they arise
    (``errors.map_exceptions``); the dict also reports ``OSError`` and its own timeouts that way.
    Anything else a backend raises surfaces unchanged, as the bug it is.
    """

    @property
    def max_key_bytes(self) -> int | None:
        """The longest key the store takes, in UTF-8 bytes; ``None`` for no limit of ours."""

    @property
    def max_value_bytes(self) -> int | None:
        """The largest encoded value the store takes; ``None`` for no limit of ours."""

    @property
    def poll_interval(self) -> float | None:
        """Seconds between checks this store suggests (polled stores, or a push store's safety net);
        ``None``: no suggestion (polled stores then check every second)."""

    async def start(self) -> None:
        """Prepare what the store needs (scripts, tables); no loading. Called by ``open()``."""

    async def aclose(self) -> None:
        """Release what the backend made itself; never the client the user handed in."""

    async def load(self) -> Delta:
        """The whole content, its version and token, read atomically, as a ``full`` delta."""

    async def changes_since(self, version: int) -> Delta:
        """The range after ``version`` with the store's token at ``version`` as ``prev_token``;
        a ``full`` delta when the store can no longer tell what changed since ``version``."""

    async def set(self, key: str, value: bytes) -> Delta:
        """Store ``value`` under ``key``."""

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        """Remove ``key``; the commit and the bytes it held, or a reading and ``None`` when absent."""

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        """Store ``value`` unless ``key`` exists, atomically; the delta and the bytes now stored.

        When the key existed, the delta is a reading of its current bytes.
        """

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        """Store every item in one atomic batch where the store allows it."""

    async def clear(self) -> Delta:
        """Remove every key; the delta maps each removed key to ``None``."""

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        """Atomically: if the stored bytes equal ``expected`` (``None``: absent), store ``new``
        (``None``: remove). The commit and ``True``, or a reading of the key and ``False``."""


@runtime_checkable
class PushBackend(Backend, Protocol):
    """A backend whose store pushes change notices."""

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Delta]]:
        """Enter to subscribe; iterate to receive notices until the subscription breaks.

        Entering returns once the subscription is live, so that the dict can check the version
        right after and miss nothing. A broken subscription raises from iteration (or ends it).
        Notices are hints: the dict applies one only when it follows the cache's history exactly
        (its ``prev`` and ``prev_token`` are the cache's), and checks the store for anything else.
        """


@runtime_checkable
class KeyReader(Backend, Protocol):
    """A backend that reads one key without loading the dict (the CLI's ``get KEY`` uses it)."""

    async def read(self, key: str) -> Delta:
        """A reading of ``key`` (its bytes, or ``None`` when absent) at the store's version and token.

        Works after ``start()``; nothing is cached.
        """


@runtime_checkable
class DroppableBackend(Backend, Protocol):
    """A backend that can remove a dict from its store altogether."""

    async def drop(self) -> None:
        """Remove every trace of the dict: values, version, token history, change log, rows.

        The store is then as if the dict had never been written; a dict opened on it later starts
        empty, and caches still open on it reload to empty.
        """
