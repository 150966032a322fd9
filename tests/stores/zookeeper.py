"""ZooKeeper for the conformance suite: plain, and with the change log nearly always out of reach.

Every dict a factory makes has an aiozk client of its own (as another process would), on one fresh
znode per test; the znode is deleted recursively and the clients closed afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest

from aiodurabledict import AsyncDurableDict
from aiodurabledict.testing.conformance import Factory
from tests.servers import answers, require_zookeeper_ensemble, unavailable, zookeeper_address

ZOOKEEPER = zookeeper_address()


async def delete_tree(client: Any, path: str) -> None:
    """Delete ``path`` and everything under it (children read level by level)."""
    from aiozk import exc

    try:
        children = await client.get_children(path)
    except exc.NoNode:
        return
    await asyncio.gather(*(delete_tree(client, f"{path}/{child}") for child in children))
    with suppress(exc.NoNode):
        await client.delete(path, force=True)


class Requests:
    """Records the requests a started client writes on its connection (pings left out).

    ``count`` leaves out ``sync`` too: it is pipelined with the read after it, in the same round trip.
    """

    def __init__(self, client: Any) -> None:
        self.sent: list[str] = []
        conn = client.session.conn
        send = conn.send

        def recorded(request: Any, xid: int | None = None) -> Any:
            name = type(request).__name__
            if name != "PingRequest":
                self.sent.append(name)
            return send(request, xid=xid)

        conn.send = recorded

    @property
    def count(self) -> int:
        return sum(1 for name in self.sent if name != "SyncRequest")

    def reset(self) -> None:
        self.sent.clear()


async def start_client(servers: str = ZOOKEEPER, **options: Any) -> Any:
    """A started aiozk client, or a skip (a failure in CI) when the server does not answer."""
    try:
        import aiozk

        from aiodurabledict.backends.zookeeper import close_client
    except ImportError:
        unavailable("aiozk is not installed")
    if not any(answers(server) for server in servers.split(",")):
        unavailable(f"ZooKeeper does not answer at {servers}")
    options.setdefault("session_timeout", 10)
    client = aiozk.ZKClient(servers, **options)
    try:
        async with asyncio.timeout(5):
            await client.start()
    except (TimeoutError, aiozk.exc.ZKError, OSError) as exc:
        await close_client(client, 1.0)
        unavailable(f"ZooKeeper at {servers} is unreachable: {type(exc).__name__}: {exc}")
    return client


@asynccontextmanager
async def zookeeper_znode(
    servers: str = ZOOKEEPER, *, auth: Sequence[Any] = ()
) -> AsyncIterator[tuple[str, list[Any]]]:
    """A fresh znode path and a list that collects clients to close; deletes the tree afterwards
    (as the users of the digest ``Credentials`` in ``auth``, for nodes only they may delete)."""
    from aiozk import protocol

    from aiodurabledict.backends.zookeeper import close_client

    admin = await start_client(servers)
    for credentials in auth:
        await admin.send(protocol.AuthRequest(type=0, scheme="digest", auth=credentials.auth))
    path = f"/aiodurabledict-test/{uuid.uuid4().hex}"
    clients: list[Any] = []
    try:
        yield path, clients
    finally:
        try:
            async with asyncio.timeout(30):
                await delete_tree(admin, path)
        finally:
            for client in (*clients, admin):
                await close_client(client, 2.0)


def _zookeeper(
    *, log_keep: int | None = None, heartbeat: float = 2.0, servers: Callable[[], str] = lambda: ZOOKEEPER
) -> Any:
    @asynccontextmanager
    async def factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
        import aiozk

        from aiodurabledict.backends.zookeeper import ZookeeperDict

        connect = servers()
        async with zookeeper_znode(connect) as (path, clients):

            async def make(**opts: Any) -> AsyncDurableDict[Any]:
                # Unstarted and owned: the dict starts the client on open() and closes it with
                # every task it ran on aclose().
                client = aiozk.ZKClient(connect, session_timeout=10)
                clients.append(client)
                opts.setdefault("heartbeat", heartbeat)
                if log_keep is not None:
                    # A log of one entry: most reads fall back to a reload.
                    opts.setdefault("log_keep", log_keep)
                return ZookeeperDict(path, client, owns_client=True, **opts)

            yield make

    return factory


PARAMS = [
    pytest.param(_zookeeper(), id="zookeeper", marks=pytest.mark.zookeeper),
    pytest.param(
        _zookeeper(log_keep=1, heartbeat=0.3), id="zookeeper-short-log", marks=pytest.mark.zookeeper
    ),
    pytest.param(
        _zookeeper(servers=require_zookeeper_ensemble), id="zookeeper-ensemble", marks=pytest.mark.zookeeper
    ),
]


async def expire_session(zk: Any, address: str, *, session_timeout: float = 10.0, attempts: int = 5) -> None:
    """Expire ``zk``'s session the way ZooKeeper's own tests do: another connection takes the session
    over and closes it. The owner may reconnect and take its session back before the close arrives
    (the close then fails): try again until the owner is on a new session."""
    import aiozk

    from aiodurabledict.backends.zookeeper import close_client

    old = zk.session.session_id
    loop = asyncio.get_running_loop()
    for _ in range(attempts):
        thief = aiozk.ZKClient(address, session_timeout=session_timeout)
        thief.session.session_id = old
        thief.session.password = zk.session.password
        async with asyncio.timeout(20):
            await thief.start()
        await close_client(thief, 2.0)
        deadline = loop.time() + 5.0
        while loop.time() < deadline:
            if zk.session.session_id not in (old, None):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the session could not be expired in {attempts} attempts")
