"""The dict's nodes: how a key becomes a znode name, and what the stamp and the log entries hold.

Under the dict's node ``P`` (the keyspace, e.g. ``/app/settings``)::

    P              the stamp. data: "2 <token> <count> <zxid> <token>\\n" (this commit's token, then
                   the commit before it as its writer knew it, or "- - -") and the names the commit
                   changed, joined by "/" ("*": possibly all); for a write of one key
                   "<name>\\n=<value>" (values up to 8 KiB) or "<name>\\n-" (deleted).
                   stat: mzxid = zxid of the last write (the dict's version); version = writes so far
    P/<name>       one node per key; data = the value's bytes
    P/.log/e<seq>  one sequential entry per write. data: "2 <token>\\n" and the names it changed

Stamps and entries written before tokens existed have no "2 " line (a name never holds a space, so
the line cannot be mistaken): their commits have no token. Anything else another tool wrote there
is read as "unknown": no token, possibly every name changed. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = [
    "ALL",
    "ENTRY",
    "INLINE_LIMIT",
    "LOG",
    "MAX_KEY_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_VALUE_BYTES",
    "Commit",
    "Entry",
    "Stamp",
    "encode_entry",
    "encode_stamp",
    "entry_order",
    "escape_key",
    "parse_entry",
    "parse_stamp",
    "unescape_key",
]

# jute.maxbuffer's default: the server drops the connection on a larger request, so every request
# is measured before it is sent.
MAX_REQUEST_BYTES = 0xFFFFF
# A key escapes to at most three times its bytes and is written three times per write (node path,
# stamp, log entry): 1 KiB keys leave a value room for all but 16 KiB of the request.
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = MAX_REQUEST_BYTES - 16 * 1024

LOG = ".log"
ENTRY = "e"
ALL = b"*"
# Changed names beyond this size are logged as "*" (readers reload everything) rather than
# doubling a large batch's request.
PAYLOAD_LIMIT = 32 * 1024
# A value this small also rides in the stamp, so that followers get it with the stamp's read.
INLINE_LIMIT = 8 * 1024

_VERSION = b"2 "
_TOKEN = re.compile(r"[0-9a-f]{1,64}\Z")
_NONE = "-"


def escape_key(key: str) -> str:
    """The znode name of ``key``: percent-encoded UTF-8, a leading ``.`` encoded too."""
    name = quote(key, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


def unescape_key(name: str) -> str | None:
    """The key a child named ``name`` holds, or ``None`` when it is not a key's node."""
    if not name or name.startswith("."):
        return None
    try:
        key = unquote(name, errors="strict")
    except UnicodeDecodeError:
        return None
    return key if key and escape_key(key) == name else None


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit of the dict's node: the node's write count after it, its zxid and its token."""

    count: int
    zxid: int
    token: str | None


@dataclass(frozen=True, slots=True)
class Stamp:
    """What the dict's node says about the last write.

    ``before``: the commit right before it, as its writer knew it (``None``: not known). It is
    that commit exactly when the node's write count is ``before.count + 1``.
    ``names``: the names it changed (``None``: possibly all); ``inline``: the value of a one-key
    write (``None`` for a deletion) when it rides in the stamp.
    """

    token: str | None
    before: Commit | None
    names: frozenset[str] | None
    inline: Mapping[str, bytes | None] | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """A log entry: the token of the commit that wrote it and the names it changed (``None``: all)."""

    token: str | None
    names: frozenset[str] | None


_UNKNOWN_STAMP = Stamp(token=None, before=None, names=None)
_UNKNOWN_ENTRY = Entry(token=None, names=None)


def _names(raw: bytes) -> bytes:
    return ALL if len(raw) > PAYLOAD_LIMIT else raw


def names_payload(names: Iterable[str]) -> bytes:
    """The names a write changed, as a log entry lists them."""
    return _names("/".join(names).encode())


def encode_stamp(token: str, before: Commit | None, changes: Mapping[str, bytes | None]) -> bytes:
    """The stamp of a commit with ``token`` that follows ``before`` and writes ``changes``."""
    if before is None:
        header = f"2 {token} - - -\n"
    else:
        header = f"2 {token} {before.count} {before.zxid} {before.token or _NONE}\n"
    if len(changes) == 1:
        ((name, raw),) = changes.items()
        if raw is None:
            return header.encode() + name.encode() + b"\n-"
        if len(raw) <= INLINE_LIMIT:
            return header.encode() + name.encode() + b"\n=" + raw
    return header.encode() + names_payload(changes)


def encode_entry(token: str, names: Iterable[str]) -> bytes:
    """The log entry of a commit with ``token`` that changed ``names``."""
    return f"2 {token}\n".encode() + names_payload(names)


def _token(text: str) -> str | None:
    if text == _NONE:
        return None
    if not _TOKEN.match(text):
        raise ValueError("not a token")
    return text


def parse_stamp(data: bytes | None) -> Stamp:
    """Read a stamp in any format we ever wrote; anything else is an unknown write."""
    if not data:
        return Stamp(token=None, before=None, names=frozenset())
    try:
        if data.startswith(_VERSION):
            line, newline, payload = data.partition(b"\n")
            if not newline:
                return _UNKNOWN_STAMP
            fields = line.decode("ascii").split(" ")
            if len(fields) != 5:
                return _UNKNOWN_STAMP
            token = _token(fields[1])
            before = None
            if fields[2] != _NONE:
                before = Commit(count=int(fields[2]), zxid=int(fields[3]), token=_token(fields[4]))
        else:
            token, before, payload = None, None, data
        names, inline = _payload(payload)
    except (UnicodeDecodeError, ValueError):
        return _UNKNOWN_STAMP
    return Stamp(token=token, before=before, names=names, inline=inline)


def parse_entry(data: bytes | None) -> Entry:
    """Read a log entry in any format we ever wrote; anything else lists every name."""
    try:
        token = None
        payload = data or b""
        if payload.startswith(_VERSION):
            line, newline, payload = payload.partition(b"\n")
            if not newline:
                return _UNKNOWN_ENTRY
            token = _token(line[2:].decode("ascii"))
        names, _ = _payload(payload)
    except (UnicodeDecodeError, ValueError):
        return _UNKNOWN_ENTRY
    return Entry(token=token, names=names)


def _payload(payload: bytes) -> tuple[frozenset[str] | None, dict[str, bytes | None] | None]:
    if payload == ALL:
        return None, None
    first, newline, rest = payload.partition(b"\n")
    names = frozenset(n for n in first.decode("utf-8").split("/") if n)
    if not newline:
        return names, None
    if len(names) != 1 or not (rest == b"-" or rest.startswith(b"=")):
        raise ValueError("not a one-key payload")
    (name,) = names
    return names, {name: None if rest == b"-" else rest[1:]}


def entry_order(name: str) -> int:
    """Where a log entry stands: the sequence number ZooKeeper appended to its name (-1: not ours)."""
    digits = name[len(ENTRY) :]
    return int(digits) if name.startswith(ENTRY) and digits.isdigit() else -1
