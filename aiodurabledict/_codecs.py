"""Codecs turn values into the bytes a store keeps, and back. JSON is the default; pickle is opt-in."""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, runtime_checkable

__all__ = ["Codec", "JSONCodec", "PickleCodec", "RawCodec"]


@runtime_checkable
class Codec(Protocol):
    """Turns a value into bytes and back.

    ``encode`` raises ``TypeError`` or ``ValueError`` for a value it cannot encode (the dict reports
    it as ``EncodeError``); ``decode`` raises ``ValueError`` for bytes it cannot read (``DecodeError``).
    """

    def encode(self, value: Any) -> bytes:
        """The bytes that store ``value``."""

    def decode(self, data: bytes) -> Any:
        """The value ``data`` holds."""


class JSONCodec:
    """UTF-8 JSON, compact. Safe with any store: decoding runs no code. NaN and infinities are refused."""

    __slots__ = ("_decoder", "_encoder")

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self._decoder = json.JSONDecoder()

    def encode(self, value: Any) -> bytes:
        """``value`` as compact UTF-8 JSON."""
        return self._encoder.encode(value).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        """The value of UTF-8 JSON ``data``."""
        # json.loads accepts bytes and detects the encoding; decoding ourselves is stricter.
        return self._decoder.decode(data.decode("utf-8"))

    def __repr__(self) -> str:
        return "JSONCodec()"


class PickleCodec:
    """Pickle: any picklable value, at the price of safety.

    Unpickling runs code chosen by whoever wrote the bytes. Use it only when every writer of the store
    is trusted; it is never the default.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
        self.protocol: int = protocol

    def encode(self, value: Any) -> bytes:
        """``value`` pickled; ``TypeError`` when it cannot be."""
        try:
            return pickle.dumps(value, protocol=self.protocol)
        except (pickle.PicklingError, AttributeError) as exc:
            raise TypeError(str(exc)) from exc

    def decode(self, data: bytes) -> Any:
        """The unpickled value (runs code the writer chose); ``ValueError`` when it fails."""
        try:
            return pickle.loads(data)  # noqa: S301 - opt-in, documented as unsafe
        except Exception as exc:
            raise ValueError(str(exc)) from exc

    def __repr__(self) -> str:
        return f"PickleCodec(protocol={self.protocol})"


class RawCodec:
    """Bytes stay bytes: for applications that encode values themselves."""

    __slots__ = ()

    def encode(self, value: Any) -> bytes:
        """``value`` as ``bytes``; ``TypeError`` for anything but bytes-like values."""
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"RawCodec stores bytes, not {type(value).__name__}")
        return bytes(value)

    def decode(self, data: bytes) -> Any:
        """``data`` itself, as ``bytes``."""
        return bytes(data)

    def __repr__(self) -> str:
        return "RawCodec()"
