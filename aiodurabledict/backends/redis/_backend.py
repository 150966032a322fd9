"""``RedisBackend`` (the store of one dict, one Lua script per commit) and ``RedisDict``.

Layout for keyspace ``ks`` (one ``{hash tag}``, so that the whole dict lives in one cluster slot):

- ``{ks}:data``     HASH   key -> value bytes
- ``{ks}:version``  STRING the store version; every commit raises it by one, except the first: it
  starts from the clock (microseconds), so that a store recreated after its keys were lost (a
  restart without persistence, a FLUSHDB) never reuses versions caches already hold
- ``{ks}:token``    STRING the token of the commit at ``version``
- ``{ks}:tokens``   ZSET   token -> version, for the last ``history_limit`` versions
- ``{ks}:log``      ZSET   key -> version at which it last changed (deletions included)
- ``{ks}:horizon``  STRING changes (or tokens) at versions below this one may be missing
- ``{ks}:notices:<db>`` the channel (sharded on Redis Cluster): one notice per commit (``notices``)

Stores written before tokens existed keep working: their tokens read as none until the next write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..._backend import Delta, new_token
from ..._dict import AsyncDurableDict, V
from ...errors import ReplicationError
from ._hub import Subscription
from ._keys import decode_key, decoded_items, encode_key
from ._lua import SCRIPTS
from ._redispy import redis_errors
from ._topology import Topology, topology_of

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = ["RedisBackend", "RedisDict"]

# Keys travel in every notice and log entry; 64 KiB is far above any sensible key and keeps one
# oversized key from bloating every subscriber's traffic.
MAX_KEY_BYTES = 64 * 1024
# Redis's own limit for a string or hash field value (proto-max-bulk-len).
MAX_VALUE_BYTES = 512 * 1024 * 1024
_PARTS = ("data", "version", "log", "horizon", "token", "tokens")


class RedisBackend:
    """The Redis store of one dict (see the module docstring for the layout).

    ``notice_value_limit``: notices carry changed keys and values up to this many bytes in all;
    larger commits send an incomplete notice and subscribers fetch the change (one round trip).
    ``tombstone_limit``: deleted keys kept in the change log before the oldest entries are trimmed.
    ``history_limit``: versions whose tokens are kept; a cache further behind reloads in full.
    ``wait_replicas``/``wait_timeout``: after each write, wait up to ``wait_timeout`` seconds for
    that many replicas to acknowledge it (``WAIT``); fewer raise ``ReplicationError``.
    ``owns_client``: ``aclose()`` closes the client too (for clients the library made itself), and
    ``also_close``, clients made with it (Sentinel's connections to its sentinels).
    """

    max_key_bytes = MAX_KEY_BYTES
    max_value_bytes: int | None = MAX_VALUE_BYTES
    poll_interval: float | None = None

    #: The dict's Redis keys (see the module docstring), each also by name below.
    keys: tuple[bytes, ...]
    data_key: bytes
    version_key: bytes
    log_key: bytes
    horizon_key: bytes
    token_key: bytes
    tokens_key: bytes
    #: The channel of the dict's notices.
    channel: bytes

    def __init__(
        self,
        keyspace: str,
        connection: Redis | RedisCluster,
        *,
        notice_value_limit: int = 8192,
        tombstone_limit: int = 10_000,
        history_limit: int = 1000,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        owns_client: bool = False,
        also_close: Sequence[Any] = (),
    ) -> None:
        if not isinstance(keyspace, str) or not keyspace:
            raise ValueError("keyspace must be a non-empty str")
        if "{" in keyspace or "}" in keyspace:
            # Braces would change the hash tag that keeps the dict's keys in one cluster slot.
            raise ValueError(f"keyspace must not contain '{{' or '}}': {keyspace!r}")
        if notice_value_limit < 0 or tombstone_limit < 0:
            raise ValueError("notice_value_limit and tombstone_limit must be >= 0")
        if history_limit < 1:
            raise ValueError("history_limit must be >= 1")
        if wait_replicas < 0 or not wait_timeout > 0:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout > 0")
        self.keyspace = keyspace
        self.client = connection
        self.notice_value_limit = notice_value_limit
        self.tombstone_limit = tombstone_limit
        self.history_limit = history_limit
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.owns_client = owns_client
        self.also_close: tuple[Any, ...] = tuple(also_close)
        self.topology: Topology = topology_of(connection)
        tag = "{" + keyspace + "}:"
        (
            self.data_key,
            self.version_key,
            self.log_key,
            self.horizon_key,
            self.token_key,
            self.tokens_key,
        ) = self.keys = tuple((tag + part).encode() for part in _PARTS)
        self.channel = f"{tag}notices:{self.topology.namespace}".encode()
        self._settings: tuple[bytes | int | str, ...] = (
            self.topology.publish,
            self.channel,
            notice_value_limit,
            tombstone_limit,
            history_limit,
        )

    def __repr__(self) -> str:
        return f"RedisBackend({self.keyspace!r} on {self.topology.describe()})"

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Make sure the scripts are loaded (one small round trip), so that each write is one more."""
        with redis_errors("cannot prepare the Redis scripts"):
            await self.topology.start()

    async def aclose(self) -> None:
        """Close the client only when this backend owns it."""
        if self.owns_client:
            with redis_errors("closing the Redis client failed"):
                for client in (self.client, *self.also_close):
                    await client.aclose()

    # -- reads ------------------------------------------------------------------------------------

    async def load(self) -> Delta:
        """Version, token and every entry, read atomically in one round trip."""
        with redis_errors():
            version, token, pairs = await self.topology.load(self.keys)
        return Delta(
            int(version or 0),
            decoded_items(pairs, repr(self)),
            full=True,
            token=_text(token),
        )

    async def changes_since(self, version: int) -> Delta:
        """Keys changed after ``version``, with their values; cost O(changes).

        Nothing changed (the check every ``sync()`` makes) costs one MGET of the version and its
        token, as cheap as a GET; otherwise one script call more reads the range atomically.
        """
        with redis_errors():
            current, token = await self.client.execute_command(
                "MGET", self.version_key, self.token_key, NEVER_DECODE=True
            )
            if int(current or 0) == version:
                return Delta(version, prev=version, token=_text(token), prev_token=_text(token))
            reply = await self.topology.run(SCRIPTS["changes"], self.keys, (version,))
        current, token, mode = int(reply[0]), _text(reply[1]), reply[2]
        if mode == 0:
            return Delta(current, prev=current, token=token, prev_token=token)
        if mode == 2:
            return await self.load()
        keys, values = reply[4], reply[5]
        return Delta(
            current,
            decoded_items(zip(keys, values, strict=True), repr(self)),
            prev=version,
            token=token,
            prev_token=_text(reply[3]),
        )

    async def read(self, key: str) -> Delta:
        """One key as the store holds it now, with the version and token: one script call."""
        with redis_errors():
            version, token, raw = await self.topology.run(SCRIPTS["read"], self.keys, (encode_key(key),))
        return Delta(int(version or 0), {key: raw}, token=_text(token))

    async def drop(self) -> None:
        """Delete every key of the dict (data, version, token, history, change log): one DEL."""
        with redis_errors("cannot drop the dict"):
            await self.client.execute_command("DEL", *self.keys)

    # -- writes -----------------------------------------------------------------------------------

    # A write is one script call. redis-py may resend a command whose reply was lost to a dropped
    # connection (its retry policy is the client owner's): a resent set() commits twice, harmlessly;
    # a resent pop() finds the key gone and reports it absent.

    async def set(self, key: str, value: bytes) -> Delta:
        """Store ``value`` under ``key``: one script call."""
        reply = await self._write("set", {key: value}, encode_key(key), value)
        return _delta(reply, {key: value})

    async def pop(self, key: str) -> tuple[Delta, bytes | None]:
        """Delete ``key``; the commit and the value it held, or a reading when it is absent."""
        reply = await self._write("pop", {key: None}, encode_key(key))
        old: bytes | None = reply[4]
        return _delta(reply, {key: None}), old

    async def setdefault(self, key: str, value: bytes) -> tuple[Delta, bytes]:
        """Store ``value`` unless ``key`` is present; the delta and the value the key holds."""
        reply = await self._write("setdefault", {key: value}, encode_key(key), value)
        if reply[2] is None:
            stored: bytes = reply[4]
            return _delta(reply, {key: stored}), stored
        return _delta(reply, {key: value}), value

    async def update(self, items: Mapping[str, bytes]) -> Delta:
        """Store every item in one commit (one script call)."""
        args: list[bytes] = []
        for key, value in items.items():
            args += (encode_key(key), value)
        reply = await self._write("update", items, *args)
        return _delta(reply, dict(items) if reply[2] is not None else {})

    async def clear(self) -> Delta:
        """Delete every key of the dict in one commit; a reading when it is already empty."""
        reply = await self._write("clear", None)
        return _delta(reply, _cleared(reply))

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None
    ) -> tuple[Delta, bool]:
        """Store ``new`` (``None``: delete) if the stored value is ``expected`` (``None``: absent),
        atomically in the script."""
        reply = await self._write(
            "compare_and_set",
            {key: new},
            encode_key(key),
            b"0" if expected is None else b"1",
            expected or b"",
            b"0" if new is None else b"1",
            new or b"",
        )
        return _delta(reply, {key: reply[5]}), reply[4] == 1

    async def _write(self, name: str, changes: Mapping[str, bytes | None] | None, *args: bytes) -> Any:
        """Run a write script; with ``wait_replicas``, also wait for the replicas. ``changes`` is
        what a commit wrote (``None``: read it from the reply), for ``ReplicationError``."""
        script = SCRIPTS[name]
        argv: tuple[bytes | int | str, ...] = (*self._settings, new_token(), *args)
        with redis_errors():
            if not self.wait_replicas:
                return await self.topology.run(script, self.keys, argv)
            reply, acked = await self.topology.run_waiting(
                script, self.keys, argv, self.wait_replicas, max(1, round(self.wait_timeout * 1000))
            )
        if acked < self.wait_replicas and reply[2] is not None:
            written = dict(changes) if changes is not None else _cleared(reply)
            raise ReplicationError(
                f"the write committed on the primary, but {acked} of {self.wait_replicas} replicas "
                f"acknowledged it within {self.wait_timeout:g} s: a failover may still lose it",
                delta=_delta(reply, written),
                acknowledged=acked,
                required=self.wait_replicas,
            )
        return reply

    # -- notices ----------------------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        """Follow this dict's notices over the client's one shared subscription."""
        channel = self.channel
        topology = self.topology
        return Subscription(lambda: topology.hub(channel), channel, timeout=5.0, refused=topology.refused)


def _text(raw: bytes | str | None) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    return raw.decode("ascii", "replace")


def _cleared(reply: Any) -> dict[str, bytes | None]:
    keys = (decode_key(raw) for raw in reply[4])
    return dict.fromkeys(key for key in keys if key is not None)


def _delta(reply: Any, changes: dict[str, bytes | None]) -> Delta:
    """The delta of a write's reply: a commit (``prev`` given) or a reading."""
    prev = reply[2]
    return Delta(
        int(reply[0]),
        changes,
        prev=None if prev is None else int(prev),
        token=_text(reply[1]),
        prev_token=_text(reply[3]),
    )


class RedisDict(AsyncDurableDict[V]):
    """A dict kept in Redis (a server, Sentinel's master, or Redis Cluster):
    ``RedisDict("settings", redis.asyncio.Redis())``.

    Options are the dict's (``codec``, ``autosync``, ``watch``, ...) plus the backend's
    ``notice_value_limit``, ``tombstone_limit``, ``history_limit``, ``wait_replicas``,
    ``wait_timeout`` and ``owns_client`` (see ``RedisBackend``). The client is the caller's and
    stays open, unless ``owns_client=True``. Every dict on one client shares one subscription.
    """

    def __init__(
        self,
        keyspace: str,
        connection: Redis | RedisCluster,
        *,
        notice_value_limit: int = 8192,
        tombstone_limit: int = 10_000,
        history_limit: int = 1000,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        owns_client: bool = False,
        also_close: Sequence[Any] = (),
        **opts: Any,
    ) -> None:
        backend = RedisBackend(
            keyspace,
            connection,
            notice_value_limit=notice_value_limit,
            tombstone_limit=tombstone_limit,
            history_limit=history_limit,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
            owns_client=owns_client,
            also_close=also_close,
        )
        super().__init__(backend, **opts)
