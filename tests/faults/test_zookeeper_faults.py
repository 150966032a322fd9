"""ZooKeeper servers stopped, restarted, frozen, and sessions expired under an open dict.

Each test starts a private ZooKeeper on its own loopback port and checks that, once the fault is
over, every open dict converges to the tree as a fresh client reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiozk.exc import NoAuth

from aiodurabledict import BackendError
from aiodurabledict.backends.zookeeper import Credentials, ZookeeperDict, close_client, unescape_key
from tests.servers import ZookeeperServer
from tests.stores.zookeeper import expire_session

pytestmark = [pytest.mark.zookeeper, pytest.mark.faults, pytest.mark.slow]

# ZooKeeper's smallest session timeout with the default tickTime (2 s) is 4 s.
SESSION_TIMEOUT = 4.0


@asynccontextmanager
async def private_zookeeper() -> AsyncIterator[tuple[ZookeeperServer, Callable[[], Any]]]:
    """A private server and a maker of started clients on it (all closed afterwards)."""
    import aiozk

    server = ZookeeperServer()
    await server.astart()
    clients: list[Any] = []

    async def client() -> Any:
        made = aiozk.ZKClient(server.address, session_timeout=SESSION_TIMEOUT)
        clients.append(made)
        async with asyncio.timeout(20):
            await made.start()
        return made

    try:
        yield server, client
    finally:
        for made in clients:
            await close_client(made, 1.0)
        server.close()


async def freeze(server: ZookeeperServer) -> None:
    """SIGSTOP the server and wait until every one of its threads has stopped (bounded)."""
    server.freeze()
    assert server.pid is not None
    deadline = time.monotonic() + 10
    while not _stopped(server.pid):
        assert time.monotonic() < deadline, "the server did not stop"
        await asyncio.sleep(0.01)


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in the stopped state (read from /proc)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            state = (task / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t"):
            return False
    return True


async def tree_content(client: Any, path: str) -> dict[str, Any]:
    """The dict's content as a fresh reader sees it: every key node's JSON value."""
    names = await client.get_children(path)
    content: dict[str, Any] = {}
    for name in names:
        key = unescape_key(name)
        if key is not None:
            content[key] = json.loads(await client.get_data(f"{path}/{name}"))
    return content


async def converged(d: ZookeeperDict[Any], client: Any, path: str, *, within: float = 60.0) -> dict[str, Any]:
    """Wait until the dict's cache equals the tree (bounded), and return the tree."""
    deadline = time.monotonic() + within
    while True:
        tree = await tree_content(client, path)
        if dict(d.view) == tree and d.status.connected:
            return tree
        assert time.monotonic() < deadline, f"no convergence: cache {dict(d.view)} vs tree {tree}"
        await asyncio.sleep(0.2)


async def write_until_done(writer: ZookeeperDict[Any], key: str, value: Any, *, within: float = 60.0) -> None:
    """Retry one write through an outage (bounded): a writer that keeps trying."""
    deadline = time.monotonic() + within
    while True:
        try:
            await writer.set(key, value)
            return
        except BackendError:
            assert time.monotonic() < deadline, "the writer never got through"
            await asyncio.sleep(0.2)


async def test_stop_longer_than_the_session_timeout() -> None:
    """Server down past the session timeout while another client writes: the dict converges.

    Whether the session survives depends on when aiozk's growing reconnection delay lets it back in;
    the next test expires it for certain.
    """
    path = f"/faults/{uuid.uuid4().hex}"
    async with private_zookeeper() as (server, client):
        reader_zk, writer_zk = await client(), await client()
        async with (
            ZookeeperDict[Any](path, reader_zk, heartbeat=0.5, timeout=2.0) as reader,
            ZookeeperDict[Any](path, writer_zk, watch=False, timeout=2.0) as writer,
        ):
            await writer.update({f"k{i}": i for i in range(20)})
            await converged(reader, reader_zk, path)

            await server.astop()
            outage = asyncio.create_task(asyncio.sleep(SESSION_TIMEOUT * 2))
            with pytest.raises(BackendError):
                await writer.set("during", 1)
            await outage
            await server.astart()
            await write_until_done(writer, "after", 2)
            await write_until_done(writer, "k0", "changed")
            await writer.delete("k1")

            tree = await converged(reader, await client(), path)
            assert tree["after"] == 2
            assert tree["k0"] == "changed"
            assert "k1" not in tree


async def test_expired_session_rereads_the_tree_and_rearms_the_watch() -> None:
    """After its session expires the dict follows the tree again by notices alone (no heartbeat)."""

    path = f"/faults/{uuid.uuid4().hex}"
    async with private_zookeeper() as (server, client):
        reader_zk, writer_zk = await client(), await client()
        # A heartbeat longer than the test: only notices can bring the writes after expiry.
        async with (
            ZookeeperDict[Any](path, reader_zk, heartbeat=3600.0, timeout=2.0) as reader,
            ZookeeperDict[Any](path, writer_zk, watch=False) as writer,
        ):
            await writer.set("before", 1)
            await converged(reader, reader_zk, path)
            old_session = reader_zk.session.session_id

            await expire_session(reader_zk, server.address, session_timeout=SESSION_TIMEOUT)

            await writer.set("while-expiring", 2)
            deadline = time.monotonic() + 60
            while reader_zk.session.session_id in (old_session, None) or not reader.status.connected:
                assert time.monotonic() < deadline, "the reader never got a new session"
                await asyncio.sleep(0.1)
            await writer.set("after", 3)
            tree = await converged(reader, writer_zk, path)
            assert tree == {"before": 1, "while-expiring": 2, "after": 3}


async def test_brief_restart() -> None:
    """A restart shorter than the session timeout: the dict resubscribes and notices resume.

    The reader's heartbeat is longer than the test, so only its resubscription (which asks
    ``changes_since``) and notices can bring the writes.
    """
    path = f"/faults/{uuid.uuid4().hex}"
    async with private_zookeeper() as (server, client):
        reader_zk, writer_zk = await client(), await client()
        async with (
            ZookeeperDict[Any](path, reader_zk, heartbeat=3600.0, timeout=2.0) as reader,
            ZookeeperDict[Any](path, writer_zk, watch=False, timeout=2.0) as writer,
        ):
            await writer.update({"a": 1, "b": 2})
            await converged(reader, reader_zk, path)
            await server.arestart()
            await write_until_done(writer, "a", 10)
            await converged(reader, writer_zk, path)
            await writer.set("c", 3)
            tree = await converged(reader, writer_zk, path)
            assert tree == {"a": 10, "b": 2, "c": 3}


async def test_frozen_server_fails_calls_in_time_and_recovers() -> None:
    """Frozen server: calls fail in time, the status shows the outage, reads serve the cache; then it converges."""
    path = f"/faults/{uuid.uuid4().hex}"
    async with private_zookeeper() as (server, client):
        reader_zk, writer_zk = await client(), await client()
        async with (
            ZookeeperDict[Any](path, reader_zk, heartbeat=0.5, timeout=1.0) as reader,
            ZookeeperDict[Any](path, writer_zk, watch=False, timeout=1.0) as writer,
        ):
            await writer.set("a", 1)
            await converged(reader, reader_zk, path)
            await freeze(server)
            try:
                with pytest.raises(BackendError):
                    await writer.set("a", 2)
                # The watcher's heartbeat notices the outage and says so in the status.
                deadline = time.monotonic() + 15
                while reader.status.connected:
                    assert time.monotonic() < deadline, "the outage never showed in the status"
                    await asyncio.sleep(0.1)
                with pytest.raises(BackendError):
                    await reader.sync()
                assert reader["a"] == 1
            finally:
                server.thaw()
            await write_until_done(writer, "b", 2)
            tree = await converged(reader, writer_zk, path)
            assert tree["b"] == 2


async def test_a_restored_backup_that_moved_on_is_reloaded_by_every_dict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's data is restored from a backup taken before some writes, and new writes carry
    its zxids past every cache's version: the caches' histories are not the store's, and every dict
    (watching, manual, and the one that made the lost writes) ends equal to the tree."""
    path = f"/faults/{uuid.uuid4().hex}"
    async with private_zookeeper() as (server, client):
        zks = [await client() for _ in range(3)]
        async with (
            ZookeeperDict[Any](path, zks[0], heartbeat=0.5, timeout=2.0) as watching,
            ZookeeperDict[Any](path, zks[1], watch=False, timeout=2.0) as manual,
            ZookeeperDict[Any](path, zks[2], watch=False, timeout=2.0) as writer,
        ):
            await writer.update({"a": 1, "b": 2})
            await manual.sync()
            await converged(watching, zks[0], path)

            await server.astop()
            backup = server.dir / "backup"
            shutil.copytree(server.dir / "data", backup)
            await server.astart()
            for i in range(5):
                await write_until_done(writer, f"lost{i}", i)
            await manual.sync()
            await converged(watching, zks[0], path)
            lost_at = watching.version
            assert manual.version == lost_at

            await server.astop()
            shutil.rmtree(server.dir / "data")
            shutil.copytree(backup, server.dir / "data")
            await server.astart()
            fresh = await client()
            async with ZookeeperDict[Any](path, fresh, watch=False, timeout=2.0) as other:
                i = 0
                while other.version <= lost_at:
                    await write_until_done(other, f"new{i}", i)
                    i += 1
            tree = await tree_content(fresh, path)
            assert not any(k.startswith("lost") for k in tree)
            assert tree["new0"] == 0

            await converged(watching, fresh, path)
            assert await write_sync(manual) is True
            assert dict(manual.view) == tree
            await write_until_done(writer, "after", 1)
            assert dict(writer.view) == {**tree, "after": 1}
            assert await tree_content(fresh, path) == {**tree, "after": 1}
        assert "history is not the one the cache followed" in caplog.text


async def test_credentials_survive_a_server_restart() -> None:
    """A dict with digest credentials keeps reading and writing its protected nodes after the
    server restarts: the credentials go out again on the new connection."""
    path = f"/faults/{uuid.uuid4().hex}"
    user = Credentials("carol", uuid.uuid4().hex)
    async with private_zookeeper() as (server, client):
        zk = await client()
        async with ZookeeperDict[Any](path, zk, credentials=user, heartbeat=0.5, timeout=2.0) as d:
            await d.set("a", 1)
            await server.arestart()
            await write_until_done(d, "b", 2)
            assert await write_sync(d) in (True, False)
            assert dict(d.view) == {"a": 1, "b": 2}
            stranger = await client()
            with pytest.raises(NoAuth):
                await stranger.get_data(path)


async def write_sync(d: ZookeeperDict[Any], *, within: float = 30.0) -> bool:
    """``sync()`` retried through an outage (bounded)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await d.sync()
        except BackendError:
            assert time.monotonic() < deadline, "sync never got through"
            await asyncio.sleep(0.2)


class WatchCutter:
    """A loopback proxy in front of a ZooKeeper server. Armed, it closes the first connection on
    which the client sends SetWatches (opcode 101) instead of passing it on: the connection is
    lost right after it was made, in the middle of aiozk's repair loop."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.armed = False
        self.cut = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers |= {writer, up_writer}
        back = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            first = await reader.readexactly(4)
            up_writer.write(first)
            if first != b"srvr":  # a session: length-prefixed frames, the first one the connect
                up_writer.write(await reader.readexactly(struct.unpack("!i", first)[0]))
                while True:
                    size = await reader.readexactly(4)
                    frame = await reader.readexactly(struct.unpack("!i", size)[0])
                    if self.armed and struct.unpack("!i", frame[4:8])[0] == 101:
                        self.armed = False
                        self.cut += 1
                        return
                    up_writer.write(size + frame)
            await self._pipe(reader, up_writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            back.cancel()
            await asyncio.gather(back, return_exceptions=True)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
        writer.transport.abort()


async def test_a_connection_lost_while_watches_are_restored_is_made_again() -> None:
    """The connection is lost right after it was made, while aiozk restores the client's watches:
    the client connects again and the dict follows again (aiozk's repair loop used to wait there,
    forever, for a connection only it could make)."""
    path = f"/faults/{uuid.uuid4().hex}"
    async with private_zookeeper() as (server, client):
        cutter = WatchCutter(server.port)
        address = await cutter.start()
        try:
            import aiozk

            proxied = aiozk.ZKClient(address, session_timeout=SESSION_TIMEOUT)
            # Another part of the application watches a node through the same client: aiozk
            # restores that watch (SetWatches) on every new connection.
            proxied.session.add_watch_callback(
                aiozk.protocol.WatchEvent.DATA_CHANGED, proxied.normalize_path(path), lambda _path: None
            )
            async with (
                ZookeeperDict[Any](path, proxied, owns_client=True, heartbeat=3600.0, timeout=2.0) as reader,
                ZookeeperDict[Any](path, await client(), watch=False) as writer,
            ):
                deadline = time.monotonic() + 10
                while not reader.live:
                    assert time.monotonic() < deadline, "the reader never went live"
                    await asyncio.sleep(0.05)
                cutter.armed = True
                cutter.drop_all()
                await writer.set("k", 1)
                deadline = time.monotonic() + 15
                while reader.view.get("k") != 1:
                    assert time.monotonic() < deadline, "the reader never followed again"
                    await asyncio.sleep(0.05)
                assert cutter.cut == 1
        finally:
            await cutter.close()
