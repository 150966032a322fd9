"""A local snapshot of the cache, so that an application can start while its store is down.

The file holds the last confirmed content (values as the codec encodes them, base64 in JSON), its
version, token and when it was confirmed. It is written atomically (a temporary file, then
``os.replace``), readable by its owner only, at most once per ``interval`` after the cache changed,
and once more at close. It is read only by ``open()`` when the store cannot be reached, and never
trusted over the store: the first check that reaches the store reloads everything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._backend import Delta
from ._cache import Cache
from ._codecs import Codec
from ._types import Change

__all__ = ["SnapshotKeeper", "bootstrap_delta", "read_snapshot"]

log = logging.getLogger("aiodurabledict")

_FORMAT = 1


def read_snapshot(path: str | os.PathLike[str]) -> tuple[Delta, float] | None:
    """The content a snapshot file holds, as a full delta, and when it was confirmed (wall clock);
    ``None`` when there is no readable snapshot (a damaged one is logged and ignored)."""
    try:
        with open(path, encoding="utf-8") as file:
            body = json.load(file)
        if body.get("format") != _FORMAT:
            raise ValueError(f"unknown snapshot format {body.get('format')!r}")
        values = {str(k): base64.b64decode(v, validate=True) for k, v in body["values"].items()}
        delta = Delta(int(body["version"]), values, full=True, token=body.get("token"))
        return delta, float(body["confirmed"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        log.warning("ignoring the snapshot file %s: %s", path, type(exc).__name__)
        return None


def bootstrap_delta(values: Mapping[str, Any], codec: Codec) -> Delta:
    """Application defaults as a full delta at version 0 (no store history: never trusted)."""
    return Delta(0, {key: codec.encode(value) for key, value in values.items()}, full=True)


class SnapshotKeeper:
    """Writes the cache to ``path`` after it changed (at most once per ``interval``) and at close."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        cache: Cache,
        confirmed: Callable[[], float],
        interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._cache = cache
        self._confirmed = confirmed  # wall-clock time the cache was last confirmed
        self._interval = interval
        self._changed = asyncio.Event()
        self._written_at = -1
        self._task: asyncio.Task[None] | None = None
        self._listener = self._on_change
        cache.listeners.append(self._listener)

    def _on_change(self, _change: Change[Any]) -> None:
        self._changed.set()

    def start(self) -> None:
        """Write the current content now, then after every change."""
        self._changed.set()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"aiodurabledict snapshot {self.path}"
        )

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self.write()
            await asyncio.sleep(self._interval)

    async def write(self) -> None:
        """Write the content if it is confirmed (not a bootstrap, not a write awaiting its check)."""
        cache = self._cache
        if not cache.loaded or cache.dirty:
            return
        if cache.changes == self._written_at:
            return
        marker = cache.changes
        body = {
            "format": _FORMAT,
            "version": cache.version,
            "token": cache.token,
            "confirmed": self._confirmed(),
            "values": {
                k: base64.b64encode(cache.codec.encode(v)).decode("ascii") for k, v in cache.data.items()
            },
        }
        try:
            await asyncio.to_thread(_write_atomically, self.path, json.dumps(body, separators=(",", ":")))
        except OSError as exc:
            log.warning("could not write the snapshot file %s: %s", self.path, exc)
        else:
            self._written_at = marker

    async def aclose(self) -> None:
        """Stop, after a last write of what changed."""
        listeners = self._cache.listeners
        if self._listener in listeners:
            listeners.remove(self._listener)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.write()


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once; the file is readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
