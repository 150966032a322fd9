"""The errors aiodurabledict raises: one rooted tree, and the mapper that builds it at the I/O edge.

DurableDictError
 ├── BackendError          the store failed or is unreachable (the client's error is __cause__)
 │    ├── StaleError       the cache went unconfirmed for longer than ``max_staleness``
 │    └── ReplicationError a write committed, but fewer replicas than asked acknowledged it
 ├── NotOpenError          used before ``open()`` or after ``aclose()``, or in another process
 ├── EncodeError           (also ValueError) the codec cannot encode a value; nothing was written
 ├── DecodeError           (also ValueError) a stored value cannot be decoded; names the key
 ├── InvalidKeyError       (also ValueError) an empty, over-long or unencodable key
 └── ValueTooLargeError    (also ValueError) larger than the store accepts; nothing was sent
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._backend import Delta

__all__ = [
    "BackendError",
    "DecodeError",
    "DurableDictError",
    "EncodeError",
    "InvalidKeyError",
    "NotOpenError",
    "ReplicationError",
    "StaleError",
    "ValueTooLargeError",
    "map_exceptions",
]


class DurableDictError(Exception):
    """Root of every error this library raises."""


class BackendError(DurableDictError):
    """The store failed or could not be reached; the client's own exception is ``__cause__``."""


class StaleError(BackendError):
    """The cache has gone unconfirmed for longer than the dict's ``max_staleness``."""


class ReplicationError(BackendError):
    """A write committed on the primary, but fewer replicas than asked acknowledged it in time.

    The write stands (the cache shows it), yet a failover before it reaches a replica would lose
    it. ``acknowledged`` and ``required`` count replicas; ``delta`` is what the write committed.
    """

    def __init__(self, message: str, *, delta: Delta, acknowledged: int, required: int) -> None:
        super().__init__(message)
        self.delta = delta
        self.acknowledged = acknowledged
        self.required = required


class NotOpenError(DurableDictError):
    """The dict is not open (never opened, already closed, or opened by another process)."""


class EncodeError(DurableDictError, ValueError):
    """The codec could not encode a value; nothing was written."""


class DecodeError(DurableDictError, ValueError):
    """A stored value could not be decoded; ``key`` names it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"cannot decode the stored value of key {key!r}: {reason}")
        self.key = key


class InvalidKeyError(DurableDictError, ValueError):
    """The key is empty, too long for the store, or not encodable as UTF-8."""


class ValueTooLargeError(DurableDictError, ValueError):
    """The encoded value is larger than the store accepts; nothing was sent."""


@contextmanager
def map_exceptions(*native: type[BaseException], message: str = "the store failed") -> Iterator[None]:
    """Re-raise the given native exceptions (any ``Exception`` when none are given) as ``BackendError``.

    Our own errors and cancellation pass through untouched; the native error becomes ``__cause__``.
    """
    catch = native or (Exception,)
    try:
        yield
    except DurableDictError:
        raise
    except asyncio.CancelledError:
        raise
    except catch as exc:
        raise BackendError(f"{message}: {type(exc).__name__}: {exc}") from exc
