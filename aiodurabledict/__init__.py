"""aiodurabledict: an asyncio dictionary kept in a durable, shared store and cached in memory.

Reads cost a dict lookup; writes go to the store first; a background watcher keeps every process's
cache within milliseconds of the store. Store classes import their client library only when used, so a
missing extra fails only for that store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._backend import Backend, Delta, PushBackend, new_token
from ._codecs import Codec, JSONCodec, PickleCodec, RawCodec
from ._dict import AsyncDurableDict
from ._types import MISSING, Change, Missing, Status
from .backends.memory import MemoryDict, MemoryStore
from .errors import (
    BackendError,
    DecodeError,
    DurableDictError,
    EncodeError,
    InvalidKeyError,
    NotOpenError,
    ReplicationError,
    StaleError,
    ValueTooLargeError,
)

if TYPE_CHECKING:
    from ._urls import open_dict
    from .backends.redis import RedisDict
    from .backends.tortoise import ModelDict
    from .backends.zookeeper import ZookeeperDict

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "AsyncDurableDict",
    "Backend",
    "BackendError",
    "Change",
    "Codec",
    "DecodeError",
    "Delta",
    "DurableDictError",
    "EncodeError",
    "InvalidKeyError",
    "JSONCodec",
    "MemoryDict",
    "MemoryStore",
    "Missing",
    "ModelDict",
    "NotOpenError",
    "PickleCodec",
    "PushBackend",
    "RawCodec",
    "RedisDict",
    "ReplicationError",
    "StaleError",
    "Status",
    "ValueTooLargeError",
    "ZookeeperDict",
    "new_token",
    "open_dict",
]

_LAZY = {
    "RedisDict": ".backends.redis",
    "ZookeeperDict": ".backends.zookeeper",
    "ModelDict": ".backends.tortoise",
    "open_dict": "._urls",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiodurabledict' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
