"""The notice format the write scripts publish, and its parser.

A notice is ``2 <version> <prev> <token> <prev_token> <c|i>\\n`` (a token is ``-`` where the store
had none), followed, for a complete (``c``) notice, by each changed key as ``<len>:<bytes>`` and then
``=<len>:<bytes>`` (its new value) or ``-`` (deleted). An incomplete (``i``) notice has no entries:
subscribers fetch the change with ``changes_since``. Notices of the first format (``1 ...``) are
refused like any malformed one.
"""

from __future__ import annotations

from ..._backend import Delta
from ._keys import decode_key

__all__ = ["encode_notice", "parse_notice"]

_HEADER = b"2"
_MAX_NUMBER_DIGITS = 20


def parse_notice(data: bytes) -> Delta:
    """Parse a notice published by the write scripts; ``ValueError`` when it is malformed.

    A key that is not UTF-8 text (written by another tool) is left out, as the dict leaves it out.
    """
    try:
        newline = data.index(b"\n")
    except ValueError:
        raise ValueError("notice without a header") from None
    head = data[:newline].split(b" ")
    if len(head) != 6 or head[0] != _HEADER or head[5] not in (b"c", b"i"):
        raise ValueError("unknown notice header")
    version, prev = _number(head[1]), _number(head[2])
    token, prev_token = _token(head[3]), _token(head[4])
    if head[5] == b"i":
        if newline + 1 != len(data):
            raise ValueError("incomplete notice with entries")
        return Delta(version, prev=prev, complete=False, token=token, prev_token=prev_token)
    changes: dict[str, bytes | None] = {}
    pos, end = newline + 1, len(data)
    while pos < end:
        start, stop = _field(data, pos)
        if stop >= end:
            raise ValueError("notice entry without a value")
        raw_key, tag = data[start:stop], data[stop]
        value: bytes | None
        if tag == 0x3D:  # '='
            vstart, pos = _field(data, stop + 1)
            value = data[vstart:pos]
        elif tag == 0x2D:  # '-'
            value = None
            pos = stop + 1
        else:
            raise ValueError("bad notice entry")
        key = decode_key(raw_key)
        if key is not None:
            changes[key] = value
    return Delta(version, changes, prev=prev, token=token, prev_token=prev_token)


def encode_notice(delta: Delta) -> bytes:
    """The bytes the scripts publish for ``delta`` (a commit); the format's reference, for tests."""
    assert delta.prev is not None
    mark = b"c" if delta.complete else b"i"
    head = b"2 %d %d %s %s %s\n" % (
        delta.version,
        delta.prev,
        (delta.token or "-").encode(),
        (delta.prev_token or "-").encode(),
        mark,
    )
    out = [head]
    if delta.complete:
        for key, value in delta.changes.items():
            raw = key.encode()
            out.append(b"%d:%s" % (len(raw), raw))
            out.append(b"-" if value is None else b"=%d:%s" % (len(value), value))
    return b"".join(out)


def _number(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > _MAX_NUMBER_DIGITS:
        raise ValueError("bad number in notice")
    return int(raw)


def _token(raw: bytes) -> str | None:
    if raw == b"-":
        return None
    if not raw or len(raw) > 64 or not raw.isalnum():
        raise ValueError("bad token in notice")
    return raw.decode("ascii")


def _field(data: bytes, pos: int) -> tuple[int, int]:
    """Bounds of the ``<len>:<bytes>`` field at ``pos``."""
    colon = data.find(b":", pos, pos + _MAX_NUMBER_DIGITS + 1)
    if colon < 0:
        raise ValueError("bad field length in notice")
    start = colon + 1
    stop = start + _number(data[pos:colon])
    if stop > len(data):
        raise ValueError("truncated notice")
    return start, stop
