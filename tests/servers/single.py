"""Private single servers: Redis, memcached, a standalone ZooKeeper and PostgreSQL.

Each runs on a free loopback port, in a temporary folder, as a child process of the test that
starts it: the test can stop, kill, freeze and restart it without disturbing anybody else.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers._base import (
    HOST,
    Server,
    ServerError,
    answers,
    ask,
    serve,
    service_user,
    unavailable,
    which,
)


class RedisServer(Server):
    """A private ``redis-server``.

    With ``persistent=True`` every write is appended and fsynced (AOF, ``appendfsync always``), so
    that a restart, even after ``kill()``, keeps the content; otherwise a restart starts empty.
    """

    name = "redis"

    def __init__(
        self, *, persistent: bool = False, port: int | None = None, ready_timeout: float = 60.0
    ) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self.persistent = persistent
        self._binary = which("redis-server", hint="apt-get install redis-server")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{HOST}:{self.port}/0"

    def _prepare(self) -> None:
        if not self.persistent:
            # Nothing survives a restart: drop files a previous run may have left.
            for leftover in self.dir.glob("*.rdb"):
                leftover.unlink()

    def _command(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        return [
            self._binary,
            "--bind", HOST,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--save", "",
            *persistence,
            "--loglevel", "warning",
        ]  # fmt: skip

    def _ready(self) -> bool:
        return ask(self.port, b"PING\r\n").startswith(b"+PONG")


class MemcachedServer(Server):
    """A private ``memcached`` (memory only: a restart starts empty)."""

    name = "memcached"

    def __init__(self, *, port: int | None = None, memory_mb: int = 64, ready_timeout: float = 60.0) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self.memory_mb = memory_mb
        self._binary = which("memcached", hint="apt-get install memcached")

    def _command(self) -> list[str]:
        command = [self._binary, "-l", HOST, "-p", str(self.port), "-U", "0", "-m", str(self.memory_mb)]
        if os.geteuid() == 0:
            # memcached refuses to run as root unless told which user to become.
            command += ["-u", service_user("memcache", "nobody")]
        return command

    def _ready(self) -> bool:
        return ask(self.port, b"version\r\n").startswith(b"VERSION")


_ZOOKEEPER_JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/zookeeper/zookeeper.jar")


def zookeeper_classpath() -> str:
    """The classpath of Debian's ZooKeeper; the test is unavailable without it."""
    jar = next((j for j in _ZOOKEEPER_JARS if os.path.exists(j)), None)
    if jar is None:
        unavailable("ZooKeeper's jar is not installed (apt-get install zookeeper)")
    # The jar's manifest lists its dependencies; slf4j-simple makes its log readable.
    return ":".join(p for p in (jar, "/usr/share/java/slf4j-simple.jar") if os.path.exists(p))


class ZookeeperServer(Server):
    """A private standalone ZooKeeper (``ZooKeeperServerMain`` on Debian's jars).

    Its data lives in the server's folder, so a restart (even after ``kill()``) keeps the znodes;
    sessions survive a restart if clients reconnect within their session timeout.
    """

    name = "zookeeper"

    def __init__(self, *, port: int | None = None, ready_timeout: float = 60.0) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self._java = which("java", hint="apt-get install default-jre-headless")
        self._classpath = zookeeper_classpath()

    def _prepare(self) -> None:
        (self.dir / "data").mkdir(exist_ok=True)
        (self.dir / "zoo.cfg").write_text(
            "tickTime=2000\n"
            f"dataDir={self.dir / 'data'}\n"
            f"clientPort={self.port}\n"
            f"clientPortAddress={HOST}\n"
            "maxClientCnxns=0\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,stat,mntr\n"
        )

    def _command(self) -> list[str]:
        return [
            self._java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-Dzookeeper.admin.enableServer=false",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp", self._classpath,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(self.dir / "zoo.cfg"),
        ]  # fmt: skip

    def _ready(self) -> bool:
        # "ruok" says imok as soon as the port is open; "srvr" reports the version only once the
        # server takes sessions.
        return ask(self.port, b"srvr").startswith(b"Zookeeper version")


def _postgres_bindir() -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "postgres").exists():
            return bindir
    found = shutil.which("postgres")
    return Path(found).parent if found else None


class PostgresServer(Server):
    """A private PostgreSQL cluster (``initdb`` + the ``postgres`` binary), trust auth on loopback.

    Run as user ``postgres`` when the tests run as root (PostgreSQL refuses root). Its data lives in
    the server's folder, so a restart keeps the content. The database is ``postgres``, user ``postgres``.
    """

    name = "postgres"
    # SIGTERM waits for clients to disconnect; SIGINT ("fast") disconnects them and shuts down cleanly.
    stop_signal = signal.SIGINT

    def __init__(self, *, port: int | None = None, ready_timeout: float = 60.0) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        bindir = _postgres_bindir()
        if bindir is None:
            unavailable("PostgreSQL's binaries are not installed (apt-get install postgresql)")
        self._bindir = bindir
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = service_user("postgres")
            # The folder must belong to the server's user (mkdtemp made it root's, mode 0700).
            shutil.chown(self.dir, self._user, self._user)
        self.data = self.dir / "data"

    @property
    def url(self) -> str:
        """``postgres://postgres@127.0.0.1:<port>/postgres``."""
        return f"postgres://postgres@{HOST}:{self.port}/postgres"

    def _popen_kwargs(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user, "group": self._user, "extra_groups": []}

    def _prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        result = subprocess.run(
            [str(self._bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            capture_output=True,
            timeout=self.ready_timeout,
            check=False,
            **self._popen_kwargs(),
        )  # fmt: skip
        if result.returncode != 0:
            raise ServerError(f"initdb failed: {result.stdout.decode()} {result.stderr.decode()}")

    def _command(self) -> list[str]:
        return [
            str(self._bindir / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-c", f"listen_addresses={HOST}",
            "-c", f"unix_socket_directories={self.dir}",
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=100",
        ]  # fmt: skip

    def _ready(self) -> bool:
        if not answers(self.address, timeout=0.2):
            return False
        result = subprocess.run(
            [str(self._bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-t", "1"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[Callable[..., RedisServer]]:
    """Factory: ``redis_server(persistent=False)`` starts a private Redis; all are killed at teardown."""
    yield from serve(RedisServer)


@pytest.fixture
def zookeeper_server() -> Iterator[Callable[..., ZookeeperServer]]:
    """Factory: ``zookeeper_server()`` starts a private ZooKeeper; all are killed at teardown."""
    yield from serve(ZookeeperServer)


@pytest.fixture
def memcached_server() -> Iterator[Callable[..., MemcachedServer]]:
    """Factory: ``memcached_server()`` starts a private memcached; all are killed at teardown."""
    yield from serve(MemcachedServer)


@pytest.fixture
def postgres_server() -> Iterator[Callable[..., PostgresServer]]:
    """Factory: ``postgres_server()`` starts a private PostgreSQL; all are killed at teardown."""
    yield from serve(PostgresServer)
