"""Redis: a hash per dict, a version counter and a change log, written by one Lua script per commit.

Layout for keyspace ``ks`` (one ``{hash tag}``, so the layout is valid on Redis Cluster):

- ``{ks}:data``     HASH   key -> value bytes
- ``{ks}:version``  STRING the store version; every commit raises it by exactly one, except the
  first: it starts from the clock (microseconds), so that a store recreated after its keys were
  lost (a restart without persistence, a FLUSHDB) never reuses versions caches already hold
- ``{ks}:log``      ZSET   key -> version at which it last changed (deletions included)
- ``{ks}:horizon``  STRING changes at versions up to this one may be missing from the log
- ``{ks}:notices``  pub/sub channel: one notice per commit

A notice is ``1 <version> <prev> <c|i>\\n`` followed, for a complete (``c``) notice, by each
changed key as ``<len>:<bytes>`` and then ``=<len>:<bytes>`` (its new value) or ``-`` (deleted).
Notices whose keys and values exceed ``notice_value_limit`` bytes are sent incomplete (``i``,
no entries): subscribers fetch the change with ``changes_since``.

The user's client is used as given (``decode_responses``, RESP2 or RESP3, retries, TLS): replies are
read undecoded, so values stay bytes whatever the client decodes. The layout keeps Redis Cluster's
rules (one slot per dict); a ``RedisCluster`` client takes the script paths only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from .._backend import Delta
from .._dict import AsyncDurableDict, V
from ..errors import BackendError, map_exceptions

try:
    from redis.asyncio import Redis
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("RedisDict needs redis-py: pip install 'aiodurabledict[redis]'", name=exc.name) from exc

if TYPE_CHECKING:
    from redis.asyncio import RedisCluster

__all__ = ["RedisBackend", "RedisDict", "parse_notice"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# Keys travel in every notice and log entry; 64 KiB is far above any sensible key and keeps one
# oversized key from bloating every subscriber's traffic.
MAX_KEY_BYTES = 64 * 1024
# Redis's own limit for a string or hash field value (proto-max-bulk-len).
MAX_VALUE_BYTES = 512 * 1024 * 1024
# How long one read on the subscription may block before it re-arms: bounded, so that the read
# never depends on a redis-py version's idea of "no timeout".
_READ_SLICE = 5.0

# ---------------------------------------------------------------------------------------------------
# Lua. KEYS: data, version, log, horizon. ARGV: channel, notice_value_limit (-1: do not publish),
# tombstone_limit, then the operation's own arguments from ARGV[4].

# Reads need only the names; writes add the commit machinery (defining it costs every call).
_READ_PRELUDE = r"""
local data, verkey, logkey, horkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- Lua's unpack() refuses more than about 8000 values: large batches go to Redis in chunks.
local CHUNK = 1000

local function fmt(n) return string.format('%d', n) end

local function current()
  return tonumber(redis.call('GET', verkey) or '0')
end
"""

_PRELUDE = (
    _READ_PRELUDE
    + r"""
local channel, nlimit, tlimit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

-- Drop the oldest log entries once deleted keys pile up, and say so in the horizon.
local function trim()
  local excess = redis.call('ZCARD', logkey) - redis.call('HLEN', data) - tlimit
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', logkey, excess + math.floor(tlimit / 2))
    local top = tonumber(popped[#popped])
    if top > tonumber(redis.call('GET', horkey) or '0') then
      redis.call('SET', horkey, fmt(top))
    end
  end
end

local function publish(v, keys, vals)
  if nlimit < 0 then return end
  local size = 0
  for i = 1, #keys do
    size = size + #keys[i]
    if vals[i] then size = size + #vals[i] end
  end
  local parts = {'1 ', fmt(v), ' ', fmt(v - 1)}
  if size > nlimit then
    parts[#parts + 1] = ' i\n'
  else
    parts[#parts + 1] = ' c\n'
    for i = 1, #keys do
      parts[#parts + 1] = #keys[i] .. ':' .. keys[i]
      if vals[i] then
        parts[#parts + 1] = '=' .. #vals[i] .. ':' .. vals[i]
      else
        parts[#parts + 1] = '-'
      end
    end
  end
  redis.call('PUBLISH', channel, table.concat(parts))
end

-- A store's first commit (new, or recreated after its keys were lost) starts from the clock, above
-- any version it had before; the horizon below it makes caches from before the loss reload in full.
local function next_version()
  local v = redis.call('INCR', verkey)
  if v == 1 then
    local now = redis.call('TIME')
    v = tonumber(now[1]) * 1000000 + tonumber(now[2])
    redis.call('SET', verkey, fmt(v))
    redis.call('SET', horkey, fmt(v - 1))
  end
  return v
end

-- One commit: bump the version once, log every key at it, trim, announce. vals[i] false = deleted.
local function commit(keys, vals)
  local v = next_version()
  for i = 1, #keys, CHUNK do
    local z = {}
    for j = i, math.min(i + CHUNK - 1, #keys) do
      z[#z + 1] = v
      z[#z + 1] = keys[j]
    end
    redis.call('ZADD', logkey, unpack(z))
  end
  trim()
  publish(v, keys, vals)
  return v
end
"""
)

_SET = r"""
local key, val = ARGV[4], ARGV[5]
redis.call('HSET', data, key, val)
return commit({key}, {val})
"""

_POP = r"""
local key = ARGV[4]
local old = redis.call('HGET', data, key)
if not old then return {current(), false} end
redis.call('HDEL', data, key)
return {commit({key}, {false}), old}
"""

_SETDEFAULT = r"""
local key, val = ARGV[4], ARGV[5]
local old = redis.call('HGET', data, key)
if old then return {current(), old, 0} end
redis.call('HSET', data, key, val)
return {commit({key}, {val}), val, 1}
"""

_UPDATE = r"""
local keys, vals = {}, {}
for i = 4, #ARGV, 2 do
  keys[#keys + 1] = ARGV[i]
  vals[#vals + 1] = ARGV[i + 1]
end
if #keys == 0 then return current() end
for i = 4, #ARGV, 2 * CHUNK do
  redis.call('HSET', data, unpack(ARGV, i, math.min(i + 2 * CHUNK - 1, #ARGV)))
end
return commit(keys, vals)
"""

# The log is wiped with the data: every change up to the clear's version is then unknown, which
# the horizon says, so a cache from before the clear reloads (and finds the dict empty).
_CLEAR = r"""
local keys = redis.call('HKEYS', data)
if #keys == 0 then return {current(), keys} end
redis.call('DEL', data, logkey)
local vals = {}
for i = 1, #keys do vals[i] = false end
local v = next_version()
redis.call('SET', horkey, fmt(v))
publish(v, keys, vals)
return {v, keys}
"""

# Returns {version, mode, keys, values}; mode 0: the delta, 1: a full load is needed.
_CHANGES = r"""
local since = tonumber(ARGV[4])
local v = current()
if since == v then return {v, 0, {}, {}} end
if since > v or since < tonumber(redis.call('GET', horkey) or '0') then return {v, 1, {}, {}} end
local keys = redis.call('ZRANGEBYSCORE', logkey, '(' .. fmt(since), '+inf')
local vals = {}
for i = 1, #keys, CHUNK do
  local part = redis.call('HMGET', data, unpack(keys, i, math.min(i + CHUNK - 1, #keys)))
  for j = 1, #part do vals[#vals + 1] = part[j] end
end
return {v, 0, keys, vals}
"""

# Used where a MULTI/EXEC pipeline would decode values (a client with decode_responses=True).
_LOAD = r"""
return {current(), redis.call('HGETALL', data)}
"""


class _Script:
    """A Lua script called by EVALSHA, falling back to EVAL (which caches it) after a server restart.

    Replies are never decoded, whatever the client's ``decode_responses``: values are bytes.
    """

    __slots__ = ("sha", "source")

    def __init__(self, body: str, prelude: str = _PRELUDE) -> None:
        self.source = (prelude + body).encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()

    async def __call__(self, client: Any, keys: Sequence[bytes], args: Sequence[bytes | int]) -> Any:
        try:
            return await client.execute_command(
                "EVALSHA", self.sha, len(keys), *keys, *args, NEVER_DECODE=True
            )
        except NoScriptError:
            return await client.execute_command(
                "EVAL", self.source, len(keys), *keys, *args, NEVER_DECODE=True
            )


_SCRIPTS = {
    "set": _Script(_SET),
    "pop": _Script(_POP),
    "setdefault": _Script(_SETDEFAULT),
    "update": _Script(_UPDATE),
    "clear": _Script(_CLEAR),
    "changes": _Script(_CHANGES, _READ_PRELUDE),
    "load": _Script(_LOAD, _READ_PRELUDE),
}


def _key(raw: bytes) -> str:
    # Keys we wrote are UTF-8; a field written by hand that is not still shows up, losslessly.
    return raw.decode("utf-8", "surrogateescape")


def _raw(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _decodes_responses(client: Any) -> bool:
    try:
        return bool(client.get_encoder().decode_responses)
    except AttributeError:
        return True  # unknown client: take the path that is right either way


def parse_notice(data: bytes) -> Delta:
    """Parse a notice published by the write scripts; ``ValueError`` when it is malformed."""
    try:
        newline = data.index(b"\n")
    except ValueError:
        raise ValueError("notice without a header") from None
    head = data[:newline].split(b" ")
    if len(head) != 4 or head[0] != b"1" or head[3] not in (b"c", b"i"):
        raise ValueError("unknown notice header")
    version, prev = _number(head[1]), _number(head[2])
    if head[3] == b"i":
        if newline + 1 != len(data):
            raise ValueError("incomplete notice with entries")
        return Delta(version=version, prev=prev, complete=False)
    changes: dict[str, bytes | None] = {}
    pos, end = newline + 1, len(data)
    while pos < end:
        start, stop = _field(data, pos)
        if stop >= end:
            raise ValueError("notice entry without a value")
        key, tag = _key(data[start:stop]), data[stop]
        if tag == 0x3D:  # '='
            vstart, pos = _field(data, stop + 1)
            changes[key] = data[vstart:pos]
        elif tag == 0x2D:  # '-'
            changes[key] = None
            pos = stop + 1
        else:
            raise ValueError("bad notice entry")
    return Delta(version=version, changes=changes, prev=prev)


def _number(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 20:
        raise ValueError("bad number in notice")
    return int(raw)


def _field(data: bytes, pos: int) -> tuple[int, int]:
    """Bounds of the ``<len>:<bytes>`` field at ``pos``."""
    colon = data.find(b":", pos, pos + 21)
    if colon < 0:
        raise ValueError("bad field length in notice")
    start = colon + 1
    stop = start + _number(data[pos:colon])
    if stop > len(data):
        raise ValueError("truncated notice")
    return start, stop


class RedisBackend:
    """The Redis store of one dict (see the module docstring for the layout).

    ``notice_value_limit``: notices carry changed values up to this many bytes in all; larger
    commits send an incomplete notice and subscribers fetch the change (one round trip).
    ``tombstone_limit``: deleted keys kept in the change log before the oldest entries are trimmed
    (a cache further behind than the trimmed entries reloads in full).
    ``owns_client``: ``aclose()`` closes the client too (for clients the library made itself).

    Versions are dense (each commit adds one) except a store's first commit, which starts from the
    clock; a cache then sees a gap and reloads, which is what a store that lost its keys needs.
    """

    dense_versions = True
    max_key_bytes = MAX_KEY_BYTES
    max_value_bytes: int | None = MAX_VALUE_BYTES

    def __init__(
        self,
        keyspace: str,
        connection: Redis | RedisCluster,
        *,
        notice_value_limit: int = 8192,
        tombstone_limit: int = 10_000,
        owns_client: bool = False,
    ) -> None:
        if not isinstance(keyspace, str) or not keyspace:
            raise ValueError("keyspace must be a non-empty str")
        if "{" in keyspace or "}" in keyspace:
            # Braces would change the hash tag that keeps the dict's keys in one cluster slot.
            raise ValueError(f"keyspace must not contain '{{' or '}}': {keyspace!r}")
        if notice_value_limit < 0 or tombstone_limit < 0:
            raise ValueError("notice_value_limit and tombstone_limit must be >= 0")
        self.keyspace = keyspace
        self.client = connection
        self.notice_value_limit = notice_value_limit
        self.tombstone_limit = tombstone_limit
        self.owns_client = owns_client
        tag = "{" + keyspace + "}:"
        self.data_key, self.version_key, self.log_key, self.horizon_key, self.channel = (
            (tag + part).encode() for part in ("data", "version", "log", "horizon", "notices")
        )
        self._keys = (self.data_key, self.version_key, self.log_key, self.horizon_key)
        # False: commit without publishing (subscribers then rely on their heartbeat).
        self._publish = True

    def __repr__(self) -> str:
        return f"RedisBackend({self.keyspace!r})"

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Make sure the scripts are loaded (one small round trip), so that each write is one more."""
        if isinstance(self.client, Redis):
            scripts = list(_SCRIPTS.values())
            loaded = await self.client.script_exists(*(script.sha for script in scripts))
            missing = [script for script, there in zip(scripts, loaded, strict=True) if not there]
            if missing:
                async with self.client.pipeline(transaction=False) as pipe:
                    for script in missing:
                        pipe.script_load(script.source)
                    await pipe.execute()

    async def aclose(self) -> None:
        """Close the client only when this backend owns it."""
        if self.owns_client:
            await self.client.aclose()

    # -- reads ------------------------------------------------------------------------------------

    async def load(self) -> Delta:
        """Version and every entry, read atomically in one round trip."""
        if isinstance(self.client, Redis) and not _decodes_responses(self.client):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.version_key)
                pipe.hgetall(self.data_key)
                version, content = await pipe.execute()
            return Delta(
                version=int(version or 0),
                # _key() inlined: this loop runs once per key of the whole dict.
                changes={k.decode("utf-8", "surrogateescape"): v for k, v in content.items()},
                full=True,
            )
        version, flat = await self._run("load")
        return Delta(
            version=int(version),
            changes={_key(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)},
            full=True,
        )

    async def changes_since(self, version: int) -> Delta:
        """Keys changed after ``version``, with their values, in one round trip; cost O(changes)."""
        current, mode, keys, vals = await self._run("changes", version)
        if mode == 1:
            return await self.load()
        return Delta(
            version=int(current),
            changes={_key(k): v for k, v in zip(keys, vals, strict=True)},
            prev=version,
        )

    # -- writes -----------------------------------------------------------------------------------

    # A write is one script call. redis-py may resend a command whose reply was lost to a dropped
    # connection (its retry policy is the client owner's): a resent set() commits twice, harmlessly;
    # a resent pop() finds the key gone and reports it absent.

    async def set(self, key: str, value: bytes) -> Delta:
        version = int(await self._run("set", _raw(key), value))
        return Delta(version=version, changes={key: value}, prev=version - 1)

    async def pop(self, key: str) -> tuple[Delta, bytes] | None:
        version, old = await self._run("pop", _raw(key))
        if old is None:
            return None
        version = int(version)
        return Delta(version=version, changes={key: None}, prev=version - 1), old

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        version, stored, created = await self._run("setdefault", _raw(key), value)
        version = int(version)
        if created:
            return Delta(version=version, changes={key: stored}, prev=version - 1), stored
        return Delta(version=version, changes={key: stored}, prev=None), stored

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        args: list[bytes] = []
        for key, value in items.items():
            args += (_raw(key), value)
        version = int(await self._run("update", *args))
        if not items:
            return Delta(version=version)
        return Delta(version=version, changes=dict(items), prev=version - 1)

    async def clear(self) -> Delta:
        version, keys = await self._run("clear")
        version = int(version)
        if not keys:
            return Delta(version=version)
        return Delta(version=version, changes=dict.fromkeys(map(_key, keys)), prev=version - 1)

    async def _run(self, name: str, *args: bytes | int) -> Any:
        limit = self.notice_value_limit if self._publish else -1
        return await _SCRIPTS[name](
            self.client, self._keys, (self.channel, limit, self.tombstone_limit, *args)
        )

    # -- notices ----------------------------------------------------------------------------------

    def subscribe(self) -> _Subscription:
        """Subscribe to this dict's notices (a connection of its own from the client's pool)."""
        return _Subscription(self.client, self.channel)


class _Subscription:
    """``async with`` subscribes (returning once Redis confirmed it); iterating yields notices.

    Reads go to the subscription's connection directly, undecoded and without redis-py's retries:
    a dropped connection must end the subscription (the dict re-syncs on resubscribe), not be
    silently re-established while notices are lost.
    """

    def __init__(self, client: Any, channel: bytes) -> None:
        self._client = client
        self._channel = channel
        self._pubsub: Any = None

    async def __aenter__(self) -> Self:
        self._pubsub = self._client.pubsub()
        try:
            with map_exceptions(RedisError, OSError, message="cannot subscribe"):
                await _honour_cancel(self._pubsub.subscribe(self._channel))
                for _ in range(2):  # a PING sent by redis-py's health check may come first
                    reply = await _honour_cancel(self._read())
                    if reply is None:
                        raise BackendError("Redis did not confirm the subscription in time")
                    if _kind(reply) == b"subscribe":
                        return self
                raise BackendError("Redis did not confirm the subscription")
        except BaseException:
            await self._close()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            # Disconnects rather than unsubscribes: a connection that may hold unread notices must
            # not go back to the pool usable. Shielded, so that cancellation cannot leak it.
            await asyncio.shield(pubsub.aclose())

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._notices()

    async def _notices(self) -> AsyncIterator[Delta]:
        with map_exceptions(RedisError, OSError, message="the subscription broke"):
            while self._pubsub is not None:
                reply = await _honour_cancel(self._read())
                if reply is None:
                    continue
                kind = _kind(reply)
                if kind == b"message" and len(reply) == 3:
                    try:
                        yield parse_notice(reply[2])
                    except ValueError:
                        # Someone else's message on our channel; the heartbeat keeps us right.
                        log.warning("ignoring a malformed notice on %r", self._channel)
                elif kind in (b"subscribe", b"unsubscribe"):
                    raise BackendError("the subscription was reset; notices may have been lost")
        raise BackendError("the subscription was closed")

    async def _read(self) -> Any:
        pubsub = self._pubsub
        connection = None if pubsub is None else pubsub.connection
        if connection is None:
            raise BackendError("the subscription has no connection")
        return await connection.read_response(disable_decoding=True, timeout=_READ_SLICE, push_request=True)


async def _honour_cancel(call: Awaitable[T]) -> T:
    """Await ``call``, and raise ``CancelledError`` if a cancellation arrived and was swallowed.

    redis-py can absorb a cancellation that lands while a pooled connection is being set up (the
    call then returns normally); a watcher that is being stopped must still stop.
    """
    task = asyncio.current_task()
    before = 0 if task is None else task.cancelling()
    result = await call
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


def _kind(reply: Any) -> bytes | None:
    if isinstance(reply, list) and reply and isinstance(reply[0], bytes):
        return reply[0].lower()
    return None


class RedisDict(AsyncDurableDict[V]):
    """A dict kept in Redis (or Redis Cluster): ``RedisDict("settings", redis.asyncio.Redis())``.

    Options are the dict's (``codec``, ``autosync``, ``watch``, ...) plus the backend's
    ``notice_value_limit``, ``tombstone_limit`` and ``owns_client`` (see ``RedisBackend``).
    The client is the caller's and stays open, unless ``owns_client=True``.
    """

    def __init__(
        self,
        keyspace: str,
        connection: Redis | RedisCluster,
        *,
        notice_value_limit: int = 8192,
        tombstone_limit: int = 10_000,
        owns_client: bool = False,
        **opts: Any,
    ) -> None:
        backend = RedisBackend(
            keyspace,
            connection,
            notice_value_limit=notice_value_limit,
            tombstone_limit=tombstone_limit,
            owns_client=owns_client,
        )
        super().__init__(backend, **opts)
