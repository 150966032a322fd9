"""aiodurabledict: an asyncio dictionary kept in a durable, shared store and cached in memory.

Reads cost a dict lookup; writes go to the store first; a background watcher keeps every process's
cache within milliseconds of the store. Store classes import their client library only when used, so a
missing extra fails only for that store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._backend import Backend, Delta, DroppableBackend, KeyReader, PushBackend, new_token
from ._codecs import Codec, JSONCodec, PickleCodec, RawCodec
from ._dict import AsyncDurableDict
from ._types import MISSING, Change, DictOptions, Health, Missing, Status
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

__version__ = "0.2.0"

__all__ = [
    "MISSING",
    "AsyncDurableDict",
    "Backend",
    "BackendError",
    "Change",
    "Codec",
    "DecodeError",
    "Delta",
    "DictOptions",
    "DroppableBackend",
    "DurableDictError",
    "EncodeError",
    "Health",
    "InvalidKeyError",
    "JSONCodec",
    "KeyReader",
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

# name -> (module, the extra that brings what it needs)
_LAZY = {
    "RedisDict": (".backends.redis", "redis"),
    "ZookeeperDict": (".backends.zookeeper", "zookeeper"),
    "ModelDict": (".backends.tortoise", "tortoise"),
    "open_dict": ("._urls", ""),
}


def __getattr__(name: str) -> Any:
    found = _LAZY.get(name)
    if found is None:
        raise AttributeError(f"module 'aiodurabledict' has no attribute {name!r}")
    module, extra = found
    try:
        return getattr(importlib.import_module(module, __name__), name)
    except ImportError as exc:
        missing = exc.name or ""
        if not extra or missing.startswith("aiodurabledict"):
            raise
        raise ImportError(
            f"{name} needs the {extra!r} extra (missing module {missing!r}): pip install 'aiodurabledict[{extra}]'",
            name=missing,
        ) from exc
