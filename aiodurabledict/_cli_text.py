"""What the CLI reads and prints: JSON with bytes, and text a terminal shows without obeying it.

Bytes (values of ``?codec=raw`` stores) travel in JSON as ``{"$bytes": "<base64>"}``, printed that
way and read back that way, so ``dump`` then ``load`` round-trips any codec's values.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

__all__ = ["BadInput", "dumps", "loads", "shown"]

BYTES_KEY = "$bytes"

# Characters JSON leaves raw (DEL and the C1 controls, ESC's 8-bit twin CSI among them) that a
# terminal would obey: written as \u escapes, which keeps the JSON valid and the terminal safe.
_RAW_CONTROLS = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class BadInput(ValueError):
    """Input that is not the JSON the command needs."""


def _bytes_as_json(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any, **kw: Any) -> str:
    """JSON of ``value``, bytes as ``{"$bytes": …}``, with no character a terminal would obey."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=_bytes_as_json, **kw)
    return _RAW_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _json_as_bytes(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and BYTES_KEY in obj:
        try:
            return base64.b64decode(obj[BYTES_KEY], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise BadInput(f'{{"{BYTES_KEY}": …}} holds no valid base64') from None
    return obj


def loads(text: str, what: str) -> Any:
    """The JSON ``text`` (``{"$bytes": …}`` read as bytes); ``BadInput`` naming ``what`` otherwise."""
    try:
        return json.loads(text, object_hook=_json_as_bytes)
    except RecursionError:
        raise BadInput(f"{what} is nested too deeply to be read as JSON") from None
    except BadInput as exc:
        raise BadInput(f"{what}: {exc}") from None
    except ValueError as exc:
        raise BadInput(f"{what} is not valid JSON ({exc})") from None


def shown(text: str) -> str:
    """``text`` for a terminal table: control and invisible characters escaped, never obeyed."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
