"""The Lua scripts: every write is one script (one round trip, atomic), and so is every read that
needs more than one key. ``Script`` calls them by SHA and falls back to sending the source.

KEYS (every script): data, version, log, horizon, token, tokens.
Writes' ARGV: publish command (``PUBLISH``/``SPUBLISH``, empty: publish nothing), channel,
notice_value_limit, tombstone_limit, history_limit, the new commit's token, then the operation's own
arguments from ARGV[7]. A write replies ``{version, token, prev, prev_token, ...}``; ``prev`` is
false when nothing was written (a reading at ``version``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

__all__ = ["SCRIPTS", "Script"]

_READ_PRELUDE = r"""
local data, verkey, logkey, horkey, tokkey, histkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
-- Lua's unpack() refuses more than about 8000 values: large batches go to Redis in chunks.
local CHUNK = 1000

local function fmt(n) return string.format('%d', n) end

local function current()
  return tonumber(redis.call('GET', verkey) or '0'), redis.call('GET', tokkey)
end

-- What the store holds now, nothing written.
local function reading(...)
  local v, t = current()
  return {v, t, false, false, ...}
end
"""

_PRELUDE = (
    _READ_PRELUDE
    + r"""
local pubcmd, channel = ARGV[1], ARGV[2]
local nlimit, tlimit, hlimit, token = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if pubcmd ~= '' and pubcmd ~= 'PUBLISH' and pubcmd ~= 'SPUBLISH' then
  return redis.error_reply('ERR bad publish command')
end

local function raise_horizon(to)
  if to > tonumber(redis.call('GET', horkey) or '0') then
    redis.call('SET', horkey, fmt(to))
  end
end

-- Drop the oldest log entries once deleted keys pile up, and say so in the horizon.
local function trim_log()
  local excess = redis.call('ZCARD', logkey) - redis.call('HLEN', data) - tlimit
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', logkey, excess + math.floor(tlimit / 2))
    raise_horizon(tonumber(popped[#popped]))
  end
end

-- Keep the tokens of the last hlimit versions; a cache older than them cannot prove its history.
local function remember(v)
  redis.call('ZADD', histkey, v, token)
  local excess = redis.call('ZCARD', histkey) - hlimit
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', histkey, excess)
    raise_horizon(tonumber(popped[#popped]) + 1)
  end
end

local function publish(v, prev, ptok, keys, vals)
  if pubcmd == '' then return end
  local size = 0
  for i = 1, #keys do
    size = size + #keys[i]
    if vals[i] then size = size + #vals[i] end
  end
  local parts = {'2 ', fmt(v), ' ', fmt(prev), ' ', token, ' ', ptok or '-'}
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
  redis.call(pubcmd, channel, table.concat(parts))
end

-- The next version, and the one it follows with its token. A store's first commit (new, or
-- recreated after its keys were lost) starts from the clock, above any version it had before; the
-- horizon below it makes caches from before the loss reload in full.
local function advance()
  local prev, ptok = current()
  local v = redis.call('INCR', verkey)
  if v == 1 then
    local now = redis.call('TIME')
    v = tonumber(now[1]) * 1000000 + tonumber(now[2])
    redis.call('SET', verkey, fmt(v))
    raise_horizon(v - 1)
    prev, ptok = 0, false
  end
  redis.call('SET', tokkey, token)
  remember(v)
  return v, prev, ptok
end

-- One commit: bump the version once, log every key at it, trim, announce. vals[i] false = deleted.
local function commit(keys, vals)
  local v, prev, ptok = advance()
  for i = 1, #keys, CHUNK do
    local z = {}
    for j = i, math.min(i + CHUNK - 1, #keys) do
      z[#z + 1] = v
      z[#z + 1] = keys[j]
    end
    redis.call('ZADD', logkey, unpack(z))
  end
  trim_log()
  publish(v, prev, ptok, keys, vals)
  return v, prev, ptok
end

local function committed(v, prev, ptok, ...)
  return {v, token, prev, ptok, ...}
end
"""
)

_SET = r"""
local key, val = ARGV[7], ARGV[8]
redis.call('HSET', data, key, val)
return committed(commit({key}, {val}))
"""

_POP = r"""
local key = ARGV[7]
local old = redis.call('HGET', data, key)
if not old then return reading(false) end
redis.call('HDEL', data, key)
local v, prev, ptok = commit({key}, {false})
return committed(v, prev, ptok, old)
"""

_SETDEFAULT = r"""
local key, val = ARGV[7], ARGV[8]
local old = redis.call('HGET', data, key)
if old then return reading(old) end
redis.call('HSET', data, key, val)
return committed(commit({key}, {val}))
"""

_UPDATE = r"""
local keys, vals = {}, {}
for i = 7, #ARGV, 2 do
  keys[#keys + 1] = ARGV[i]
  vals[#vals + 1] = ARGV[i + 1]
end
if #keys == 0 then return reading() end
for i = 7, #ARGV, 2 * CHUNK do
  redis.call('HSET', data, unpack(ARGV, i, math.min(i + 2 * CHUNK - 1, #ARGV)))
end
return committed(commit(keys, vals))
"""

# The log is wiped with the data: every change up to the clear's version is then unknown, which
# the horizon says, so a cache from before the clear reloads (and finds the dict empty).
_CLEAR = r"""
local keys = redis.call('HKEYS', data)
if #keys == 0 then return reading({}) end
redis.call('DEL', data, logkey)
local vals = {}
for i = 1, #keys do vals[i] = false end
local v, prev, ptok = advance()
raise_horizon(v)
publish(v, prev, ptok, keys, vals)
return committed(v, prev, ptok, keys)
"""

# ARGV[7] key, ARGV[8] '1' when a value is expected (ARGV[9]), ARGV[10] '1' when a new value is
# given (ARGV[11]). Replies with the swap flag and the key's bytes after the call.
_CAS = r"""
local key = ARGV[7]
local old = redis.call('HGET', data, key)
local expected = ARGV[8] == '1' and ARGV[9] or false
local new = ARGV[10] == '1' and ARGV[11] or false
if old ~= expected then return reading(0, old) end
if not old and not new then return reading(1, false) end
if new then redis.call('HSET', data, key, new) else redis.call('HDEL', data, key) end
local v, prev, ptok = commit({key}, {new})
return committed(v, prev, ptok, 1, new)
"""

# ARGV[1] the cache's version. Replies {version, token, mode, prev_token, keys, values}; mode 0:
# nothing changed (nothing else sent), 1: the range after ARGV[1], 2: a full load is needed.
# Self-contained, with the nothing-changed answer first: it is the check every sync() makes.
_CHANGES = r"""
local since = tonumber(ARGV[1])
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = redis.call('GET', KEYS[5])
if since == v then return {v, t, 0} end
if since > v or since < tonumber(redis.call('GET', KEYS[4]) or '0') then return {v, t, 2} end
local at = redis.call('ZRANGEBYSCORE', KEYS[6], since, since, 'LIMIT', 0, 1)
local keys = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. string.format('%d', since), '+inf')
local vals = {}
for i = 1, #keys, 1000 do
  local part = redis.call('HMGET', KEYS[1], unpack(keys, i, math.min(i + 999, #keys)))
  for j = 1, #part do vals[#vals + 1] = part[j] end
end
return {v, t, 1, at[1] or false, keys, vals}
"""

# Where a MULTI/EXEC pipeline cannot be used (Redis Cluster, clients that decode responses).
_LOAD = r"""
local v, t = current()
return {v, t, redis.call('HGETALL', data)}
"""


# ARGV[1] the key. A reading of one key at the store's version: {version, token, bytes}.
_READ = r"""
local v, t = current()
return {v, t, redis.call('HGET', data, ARGV[1])}
"""


class Script:
    """A Lua script called by EVALSHA, falling back to EVAL (which caches it) after a server restart.

    Replies are never decoded, whatever the client's ``decode_responses``: values are bytes.
    """

    __slots__ = ("sha", "source")

    #: The script with its prelude, as sent by EVAL.
    source: bytes
    #: Its SHA1 (hex), as EVALSHA names it.
    sha: str

    def __init__(self, body: str, prelude: str = _PRELUDE) -> None:
        self.source = (prelude + body).encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()

    def evalsha(self, keys: Sequence[bytes], args: Sequence[bytes | int | str]) -> tuple[Any, ...]:
        """The EVALSHA command's arguments."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def eval(self, keys: Sequence[bytes], args: Sequence[bytes | int | str]) -> tuple[Any, ...]:
        """The EVAL command's arguments (sends the source; Redis caches it)."""
        return ("EVAL", self.source, len(keys), *keys, *args)

    async def __call__(self, client: Any, keys: Sequence[bytes], args: Sequence[bytes | int | str]) -> Any:
        """Run the script on ``client`` (EVALSHA, then EVAL when the server does not know it)."""
        try:
            return await client.execute_command(*self.evalsha(keys, args), NEVER_DECODE=True)
        except NoScriptError:
            return await client.execute_command(*self.eval(keys, args), NEVER_DECODE=True)


SCRIPTS = {
    "set": Script(_SET),
    "pop": Script(_POP),
    "setdefault": Script(_SETDEFAULT),
    "update": Script(_UPDATE),
    "clear": Script(_CLEAR),
    "compare_and_set": Script(_CAS),
    "changes": Script(_CHANGES, ""),
    "load": Script(_LOAD, _READ_PRELUDE),
    "read": Script(_READ, _READ_PRELUDE),
}
