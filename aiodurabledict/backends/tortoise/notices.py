"""The NOTIFY payload of one commit: ``{"v": version, "c": {key: base64 or null}}``, or the version
alone when the values do not fit (PostgreSQL refuses payloads of 8000 bytes or more)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from ..._backend import Delta

__all__ = ["NOTIFY_PAYLOAD_BYTES", "notice", "payload", "payload_tail"]

#: NOTIFY payloads must stay under 8000 bytes; larger changes are announced by version only.
NOTIFY_PAYLOAD_BYTES = 7000


def payload_tail(changes: Mapping[str, bytes | None]) -> str:
    """The payload after its version: the values (base64) when they fit, else nothing."""
    body = {k: (None if v is None else base64.b64encode(v).decode("ascii")) for k, v in changes.items()}
    tail = ',"c":' + json.dumps(body, separators=(",", ":")) + "}"
    return tail if len(tail.encode("utf-8")) < NOTIFY_PAYLOAD_BYTES else "}"


def payload(version: int, changes: Mapping[str, bytes | None]) -> str:
    """The whole payload of the commit that raised the dict to ``version``."""
    return '{"v":' + str(version) + payload_tail(changes)


def notice(text: str) -> Delta:
    """The delta a payload announces."""
    body = json.loads(text)
    version = int(body["v"])
    if "c" not in body:
        return Delta(version=version, prev=version - 1, complete=False)
    changes = {k: (None if v is None else base64.b64decode(v)) for k, v in body["c"].items()}
    return Delta(version=version, changes=changes, prev=version - 1)
