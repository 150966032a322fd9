"""The NOTIFY payload of one commit, signed: 64 hex digits of HMAC-SHA256 over the body, then the body
``{"v": version, "t": token, "p": token before, "c": {key: base64 or null}}``. ``"c"`` is left out
when the values do not fit (PostgreSQL refuses payloads of 8000 bytes or more); the dict then fetches
the change.

Any role that may connect to the database may ``NOTIFY`` on a dict's channel, so a notice is believed
only when it is signed with the secret kept in the dict's version row: readable by whoever may read
the dict's rows, and by nobody else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping

from ..._backend import Delta

__all__ = ["NOTIFY_PAYLOAD_BYTES", "BadNoticeError", "Complaints", "pads", "read", "signed", "tail"]

log: logging.Logger = logging.getLogger("aiodurabledict")

#: NOTIFY payloads must stay under 8000 bytes; larger changes are announced by version only.
NOTIFY_PAYLOAD_BYTES = 7000
_MAC = 64  # hex digits of an HMAC-SHA256
_BLOCK = 64  # SHA-256's block size, for the pads


class BadNoticeError(ValueError):
    """A payload that is not a signed notice of this dict (malformed, or signed with another secret)."""


def tail(changes: Mapping[str, bytes | None]) -> str:
    """The end of the body: the values (base64) when they fit, else just the closing brace."""
    body = {k: (None if v is None else base64.b64encode(v).decode("ascii")) for k, v in changes.items()}
    text = ',"c":' + json.dumps(body, separators=(",", ":")) + "}"
    return text if len(text.encode("utf-8")) < NOTIFY_PAYLOAD_BYTES else "}"


def signed(secret: bytes, delta: Delta) -> str:
    """The payload announcing the commit ``delta``."""
    body = f'{{"v":{delta.version},"t":{json.dumps(delta.token)},"p":{json.dumps(delta.prev_token)}' + tail(
        delta.changes
    )
    return hmac.new(secret, body.encode("utf-8"), hashlib.sha256).hexdigest() + body


def pads(secret: bytes) -> tuple[bytes, bytes]:
    """HMAC's outer and inner keys, for a statement that signs in SQL with ``sha256()``:
    ``sha256(outer || sha256(inner || body))`` is ``HMAC-SHA256(secret, body)``."""
    key = secret if len(secret) <= _BLOCK else hashlib.sha256(secret).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x5C for b in key), bytes(b ^ 0x36 for b in key)


def read(secret: bytes, payload: str) -> Delta:
    """The delta a payload announces; ``BadNoticeError`` (saying why, never quoting it) when it is not
    a notice signed with ``secret``."""
    mac, body = payload[:_MAC], payload[_MAC:]
    expected = hmac.new(secret, body.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac.encode("utf-8", "surrogatepass"), expected.encode("ascii")):
        raise BadNoticeError("its signature does not match the dict's secret")
    try:
        fields = json.loads(body)
        version = int(fields["v"])
        token, prev_token = fields["t"], fields["p"]
        if not isinstance(token, str | None) or not isinstance(prev_token, str | None):
            raise TypeError("tokens are strings")
        if "c" not in fields:
            return Delta(version, prev=version - 1, complete=False, token=token, prev_token=prev_token)
        changes = {
            str(k): (None if v is None else base64.b64decode(v, validate=True))
            for k, v in fields["c"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        # Signed but unreadable: a writer of another release, or a bug.
        raise BadNoticeError(f"a signed notice that cannot be read ({type(exc).__name__})") from None
    return Delta(version, changes, prev=version - 1, token=token, prev_token=prev_token)


class Complaints:
    """Warns about payloads that are not notices, at most once per ``every`` seconds: a stranger on
    the channel must not flood the log. The warning says why, never what the payload held."""

    def __init__(self, what: str, every: float = 60.0) -> None:
        self.what = what
        self.every = every
        #: Payloads noted so far.
        self.count: int = 0
        self._quiet = 0
        self._next = 0.0

    def note(self, reason: str) -> None:
        """Count a payload that is not a notice, and warn about it (``reason`` says why) unless a
        warning went out less than ``every`` seconds ago."""
        self.count += 1
        now = time.monotonic()
        if now < self._next:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last warning)" if self._quiet else ""
        log.warning("%s: %s%s", self.what, reason, more)
        self._quiet = 0
        self._next = now + self.every
