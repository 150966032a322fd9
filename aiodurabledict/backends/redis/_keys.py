"""Hash fields as dict keys: our keys are UTF-8 text; a field another tool wrote that is not is left
out of the dict (a key the dict could neither name nor delete), with a warning that names no value."""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["decode_key", "decoded_items", "encode_key"]

log = logging.getLogger("aiodurabledict.redis")


def encode_key(key: str) -> bytes:
    """The hash field of ``key`` (the dict checked that it is valid text)."""
    return key.encode()


def decode_key(raw: bytes) -> str | None:
    """The key of hash field ``raw``, or ``None`` when it is not UTF-8 text."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def decoded_items(pairs: Iterable[tuple[bytes, bytes | None]], where: str) -> dict[str, bytes | None]:
    """``pairs`` keyed by text; fields that are not UTF-8 are left out with one warning."""
    out: dict[str, bytes | None] = {}
    skipped = 0
    for raw, value in pairs:
        try:
            out[raw.decode()] = value
        except UnicodeDecodeError:
            skipped += 1
    if skipped:
        log.warning(
            "%s: left out %d hash field%s that %s not UTF-8 text (written by another tool?)",
            where,
            skipped,
            "" if skipped == 1 else "s",
            "is" if skipped == 1 else "are",
        )
    return out
