"""Where a dict's keys live and how to reach them: one server (a ``Redis`` client, Sentinel's
included) or Redis Cluster (a ``RedisCluster`` client). One object per variant, chosen once.

Each knows how to run a script (optionally followed by ``WAIT`` on the same connection), how to load
atomically, which pub/sub dialect to speak, and where the subscription connection goes: the client's
own pool for one server; on Redis Cluster, a plain connection to the node that owns the dict's slot,
built from the cluster client's own settings (credentials and TLS untouched), with the slot map
refreshed whenever that node refuses or fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from ._hub import Hub, hub_for
from ._lua import SCRIPTS, Script
from ._redispy import db_of, decodes_responses

__all__ = ["Cluster", "Topology", "topology_of"]

Args = Sequence[bytes | int | str]


class _PoolLink:
    """A subscription connection taken from a client's pool (a Sentinel pool finds the master)."""

    subscribe = b"subscribe"
    unsubscribe = b"unsubscribe"
    message = b"message"

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def connect(self) -> Any:
        return await self.pool.get_connection()

    async def release(self, connection: Any) -> None:
        try:
            await connection.disconnect(nowait=True)
        finally:
            await self.pool.release(connection)


class _NodeLink:
    """A sharded subscription connection of its own to one cluster node."""

    subscribe = b"ssubscribe"
    unsubscribe = b"sunsubscribe"
    message = b"smessage"

    def __init__(self, connection_class: Any, kwargs: dict[str, Any]) -> None:
        self.connection_class = connection_class
        self.kwargs = kwargs

    async def connect(self) -> Any:
        connection = self.connection_class(**self.kwargs)
        try:
            await connection.connect()
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        await connection.disconnect(nowait=True)


class Topology:
    """One server: scripts through the client, loads in MULTI, pub/sub on a pooled connection."""

    #: The publish command the scripts use.
    publish = "PUBLISH"

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def namespace(self) -> str:
        """What tells this store's notices from another's with the same keyspace (the database)."""
        return str(db_of(self.client))

    def describe(self) -> str:
        """Which server, for logs (never a credential)."""
        service = getattr(self.client.connection_pool, "service_name", None)
        where = "Redis" if service is None else f"Redis Sentinel {service!r}"
        return f"{where} db {self.namespace}"

    async def start(self) -> None:
        """Load the scripts where they are missing (one small round trip when they are there)."""
        scripts = list(SCRIPTS.values())
        loaded = await self.client.script_exists(*(script.sha for script in scripts))
        missing = [script for script, there in zip(scripts, loaded, strict=True) if not there]
        if missing:
            async with self.client.pipeline(transaction=False) as pipe:
                for script in missing:
                    pipe.script_load(script.source)
                await pipe.execute()

    async def run(self, script: Script, keys: Sequence[bytes], args: Args) -> Any:
        """Run ``script`` once."""
        return await script(self.client, keys, args)

    async def run_waiting(
        self, script: Script, keys: Sequence[bytes], args: Args, replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """Run ``script`` and ``WAIT replicas timeout_ms`` right after it, on the same connection."""
        for command in (script.evalsha(keys, args), script.eval(keys, args)):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command, NEVER_DECODE=True)
                pipe.execute_command("WAIT", replicas, timeout_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):
                continue
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(acked, BaseException):
                raise acked
            return reply, int(acked)
        raise NoScriptError("the script could not be loaded")

    async def load(self, keys: Sequence[bytes]) -> tuple[Any, Any, list[tuple[bytes, bytes]]]:
        """Version, token and every field, read atomically in one round trip."""
        data_key, version_key, token_key = keys[0], keys[1], keys[4]
        if isinstance(self.client, Redis) and not decodes_responses(self.client):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(version_key)
                pipe.get(token_key)
                pipe.hgetall(data_key)
                version, token, content = await pipe.execute()
            return version, token, list(content.items())
        version, token, flat = await SCRIPTS["load"](self.client, keys, ())
        return version, token, list(zip(flat[::2], flat[1::2], strict=True))

    def hub(self, channel: bytes) -> Hub:
        """The shared subscription of this client."""
        pool = self.client.connection_pool
        return hub_for(self.client, None, lambda: _PoolLink(pool), f"redis subscription {self.namespace}")

    async def refused(self, exc: BaseException) -> None:
        """Joining failed; a single server has nothing to refresh."""


class Cluster(Topology):
    """Redis Cluster: sharded pub/sub on the slot's node, loads by script, a slot map to refresh."""

    publish = "SPUBLISH"

    @property
    def namespace(self) -> str:
        return "0"

    def describe(self) -> str:
        return "Redis Cluster"

    async def start(self) -> None:
        """Nothing: a node that lacks a script is sent its source once (EVALSHA falls back to EVAL)."""

    async def run_waiting(
        self, script: Script, keys: Sequence[bytes], args: Args, replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        node = self.client.get_node_from_key(keys[0])
        for command in (script.evalsha(keys, args), script.eval(keys, args)):
            connection = node.acquire_connection()
            try:
                await connection.send_packed_command(
                    connection.pack_commands([command, ("WAIT", replicas, timeout_ms)])
                )
                replies: list[Any] = []
                for _ in range(2):
                    try:
                        replies.append(await connection.read_response(disable_decoding=True))
                    except ResponseError as exc:
                        replies.append(exc)
            except BaseException:
                await connection.disconnect(nowait=True)
                raise
            finally:
                node.release(connection)
            reply, acked = replies
            if isinstance(reply, NoScriptError):
                continue
            if isinstance(reply, ResponseError):
                if str(reply).startswith(("MOVED", "ASK", "CLUSTERDOWN")):
                    await self.refused(reply)
                raise reply
            if isinstance(acked, BaseException):
                raise acked
            return reply, int(acked)
        raise NoScriptError("the script could not be loaded")

    async def load(self, keys: Sequence[bytes]) -> tuple[Any, Any, list[tuple[bytes, bytes]]]:
        version, token, flat = await SCRIPTS["load"](self.client, keys, ())
        return version, token, list(zip(flat[::2], flat[1::2], strict=True))

    def hub(self, channel: bytes) -> Hub:
        """The shared sharded subscription of this client on the node that owns ``channel``'s slot."""
        node = self.client.get_node_from_key(channel)
        return hub_for(
            self.client,
            node.name,
            lambda: _NodeLink(node.connection_class, dict(node.connection_kwargs)),
            f"redis cluster subscription {node.name}",
        )

    async def refused(self, exc: BaseException) -> None:
        """The slot's node failed or refused: ask the cluster who owns what now."""
        await self.client.nodes_manager.initialize()


def topology_of(client: Any) -> Topology:
    """The variant for ``client``: ``Cluster`` for a ``RedisCluster``, else one server."""
    try:
        from redis.asyncio import RedisCluster
    except ImportError:  # pragma: no cover - every supported redis-py has it
        return Topology(client)
    return Cluster(client) if isinstance(client, RedisCluster) else Topology(client)
