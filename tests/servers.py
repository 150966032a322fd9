"""Real servers for the tests: the shared default servers' addresses, and private instances.

The shared servers (Redis, PostgreSQL, ZooKeeper, memcached on loopback) are found through the
``AIODURABLEDICT_*`` environment variables. Fault tests start PRIVATE servers instead, on a free
loopback port, in a temporary folder, as child processes they own: they can stop, kill, freeze and
restart them without disturbing anybody else. Every private server is killed by pid when its test
ends (fixtures), when its ``with`` block ends, and, as a last resort, when the interpreter exits.

Fixtures (import them into a conftest): ``redis_server``, ``zookeeper_server``, ``memcached_server``
and ``postgres_server`` are factories; each call starts one more server and returns it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, NoReturn, Self, TypeVar
from urllib.parse import urlsplit

import pytest

__all__ = [
    "REQUIRE_SERVERS_ENV",
    "MemcachedServer",
    "PostgresServer",
    "RedisServer",
    "Server",
    "ServerError",
    "ZookeeperServer",
    "answers",
    "free_port",
    "host_port",
    "memcached_address",
    "memcached_server",
    "postgres_server",
    "postgres_url",
    "redis_server",
    "redis_url",
    "require_memcached",
    "require_postgres",
    "require_redis",
    "require_zookeeper",
    "unavailable",
    "zookeeper_address",
    "zookeeper_server",
]

HOST = "127.0.0.1"
REQUIRE_SERVERS_ENV = "AIODURABLEDICT_REQUIRE_SERVERS"


# --- the shared servers ---------------------------------------------------------------------------


def unavailable(reason: str) -> NoReturn:
    """Skip the current test because a server is missing, or fail it where servers are required (CI)."""
    if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVERS_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def redis_url() -> str:
    """URL of the shared Redis server."""
    return os.environ.get("AIODURABLEDICT_REDIS_URL") or f"redis://{HOST}:6379/0"


def zookeeper_address() -> str:
    """``host:port`` of the shared ZooKeeper server."""
    return os.environ.get("AIODURABLEDICT_ZOOKEEPER") or f"{HOST}:2181"


def postgres_url() -> str:
    """URL of the shared PostgreSQL database."""
    return os.environ.get("AIODURABLEDICT_POSTGRES_URL") or f"postgres://postgres@{HOST}:5432/test"


def memcached_address() -> str:
    """``host:port`` of the shared memcached server."""
    return os.environ.get("AIODURABLEDICT_MEMCACHED") or f"{HOST}:11211"


def host_port(address: str, default_port: int = 0) -> tuple[str, int]:
    """Split a URL (``redis://h:p/0``) or an address (``h:p``) into host and port."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname or HOST, parts.port or default_port


def answers(address: str, timeout: float = 0.5) -> bool:
    """True when a TCP connection to the URL or address succeeds within ``timeout`` seconds."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _require(what: str, address: str) -> str:
    if not answers(address):
        unavailable(f"{what} does not answer at {address}")
    return address


def require_redis() -> str:
    """The shared Redis URL; skips (or fails, in CI) when nothing answers there."""
    return _require("Redis", redis_url())


def require_zookeeper() -> str:
    """The shared ZooKeeper address; skips (or fails, in CI) when nothing answers there."""
    return _require("ZooKeeper", zookeeper_address())


def require_postgres() -> str:
    """The shared PostgreSQL URL; skips (or fails, in CI) when nothing answers there."""
    return _require("PostgreSQL", postgres_url())


def require_memcached() -> str:
    """The shared memcached address; skips (or fails, in CI) when nothing answers there."""
    return _require("memcached", memcached_address())


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --- private servers ------------------------------------------------------------------------------


class ServerError(RuntimeError):
    """A private server did not start, or did not answer in time."""


def _ask(port: int, request: bytes, timeout: float = 1.0) -> bytes:
    """Send ``request`` and return the first bytes of the reply (empty on any failure)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            return sock.recv(256)
    except OSError:
        return b""


# Strong references: a server nobody holds any more must still be found and killed at exit.
_live: set[Server] = set()


@atexit.register
def _kill_leftovers() -> None:
    # Last resort: no server outlives the test run, even if a test forgot to clean up.
    for server in list(_live):
        server.close()


class Server:
    """One server process on its own loopback port, owned by the test that started it.

    ``start()``/``stop()``/``restart()`` block until the server answers or is gone (bounded by
    ``ready_timeout``); their ``a*`` twins run them in a thread so that the event loop, and the
    clients running on it, keep going meanwhile. ``restart()`` always reuses the same port.
    """

    name: ClassVar[str] = "server"
    #: Signal for a graceful stop.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, *, port: int | None = None, ready_timeout: float = 60.0) -> None:
        self._auto_port = port is None
        self.port: int = port if port is not None else free_port()
        self.ready_timeout = ready_timeout
        self.dir = Path(tempfile.mkdtemp(prefix=f"aiodurabledict-{self.name}-"))
        self.log_path = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._frozen = False
        self._lock = threading.Lock()
        _live.add(self)

    # what each server defines

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def _prepare(self) -> None:
        """Called before every start (data dirs, configuration)."""

    # addresses

    host: ClassVar[str] = HOST

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The address in the form clients of this server take."""
        return self.address

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the process is alive (even frozen)."""
        return self.pid is not None

    # lifecycle

    def start(self) -> Self:
        """Start the server and wait until it answers; raises ``ServerError`` otherwise."""
        with self._lock:
            if self.running:
                return self
            attempts = 3 if self._auto_port and not self._started_once else 1
            for attempt in range(attempts):
                try:
                    self._spawn_and_wait()
                except ServerError:
                    # The port picked by free_port() may have been taken meanwhile: pick another.
                    if attempt + 1 == attempts:
                        raise
                    self.port = free_port()
                else:
                    break
            self._started_once = True
            return self

    def _spawn_and_wait(self) -> None:
        self._prepare()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so that freeze/kill reach its worker processes too.
                start_new_session=True,
                **self._popen_kwargs(),
            )
        self._frozen = False
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready():
            if self._proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self._proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self._signal(signal.SIGKILL)
                self._reap(10.0)
                raise ServerError(
                    f"{self.name} did not answer on {self.address} in {self.ready_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (killing it if it takes longer than ``timeout``)."""
        with self._lock:
            if not self.running:
                return
            self.thaw()
            self._signal(self.stop_signal)
            if not self._reap(timeout):
                self._signal(signal.SIGKILL)
                self._reap(10.0)

    def kill(self) -> None:
        """Kill it with SIGKILL, as a crash would, and reap it."""
        if self.running:
            self._signal(signal.SIGKILL)
            self._reap(10.0)
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing answers."""
        if self.running:
            self._signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        """SIGCONT after ``freeze()``."""
        if self.running and self._frozen:
            self._signal(signal.SIGCONT)
        self._frozen = False

    def restart(self, *, graceful: bool = True) -> Self:
        """Stop (or kill) and start again on the same port."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def close(self) -> None:
        """Kill the server and remove its folder."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        _live.discard(self)

    async def astart(self) -> Self:
        """``start()`` without blocking the event loop."""
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """``stop()`` without blocking the event loop."""
        await asyncio.to_thread(self.stop)

    async def arestart(self, *, graceful: bool = True) -> Self:
        """``restart()`` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.restart(graceful=graceful))

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _reap(self, timeout: float) -> bool:
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} pid={self.pid}>"


def _which(program: str, *, hint: str) -> str:
    path = shutil.which(program)
    if path is None:
        unavailable(f"{program} is not installed ({hint})")
    return path


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
        self._binary = _which("redis-server", hint="apt-get install redis-server")

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
        return _ask(self.port, b"PING\r\n").startswith(b"+PONG")


class MemcachedServer(Server):
    """A private ``memcached`` (memory only: a restart starts empty)."""

    name = "memcached"

    def __init__(self, *, port: int | None = None, memory_mb: int = 64, ready_timeout: float = 60.0) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self.memory_mb = memory_mb
        self._binary = _which("memcached", hint="apt-get install memcached")

    def _command(self) -> list[str]:
        command = [self._binary, "-l", HOST, "-p", str(self.port), "-U", "0", "-m", str(self.memory_mb)]
        if os.geteuid() == 0:
            # memcached refuses to run as root unless told which user to become.
            command += ["-u", _service_user("memcache", "nobody")]
        return command

    def _ready(self) -> bool:
        return _ask(self.port, b"version\r\n").startswith(b"VERSION")


def _service_user(*candidates: str) -> str:
    import pwd

    for name in candidates:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ServerError(f"none of the users {candidates} exists")


_ZOOKEEPER_JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/zookeeper/zookeeper.jar")


class ZookeeperServer(Server):
    """A private standalone ZooKeeper (``ZooKeeperServerMain`` on Debian's jars).

    Its data lives in the server's folder, so a restart (even after ``kill()``) keeps the znodes;
    sessions survive a restart if clients reconnect within their session timeout.
    """

    name = "zookeeper"

    def __init__(self, *, port: int | None = None, ready_timeout: float = 60.0) -> None:
        super().__init__(port=port, ready_timeout=ready_timeout)
        self._java = _which("java", hint="apt-get install default-jre-headless")
        jar = next((j for j in _ZOOKEEPER_JARS if os.path.exists(j)), None)
        if jar is None:
            unavailable("ZooKeeper's jar is not installed (apt-get install zookeeper)")
        # The jar's manifest lists its dependencies; slf4j-simple makes its log readable.
        self._classpath = ":".join(p for p in (jar, "/usr/share/java/slf4j-simple.jar") if os.path.exists(p))

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
        return _ask(self.port, b"srvr").startswith(b"Zookeeper version")


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
            self._user = _service_user("postgres")
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


# --- fixtures -------------------------------------------------------------------------------------

_S = TypeVar("_S", bound=Server)


def _serve(cls: type[_S]) -> Iterator[Callable[..., _S]]:
    servers: list[_S] = []

    def make(**options: Any) -> _S:
        server = cls(**options)
        servers.append(server)
        try:
            server.start()
        except ServerError as exc:
            unavailable(f"could not start a private {cls.name}: {exc}")
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def redis_server() -> Iterator[Callable[..., RedisServer]]:
    """Factory: ``redis_server(persistent=False)`` starts a private Redis; all are killed at teardown."""
    yield from _serve(RedisServer)


@pytest.fixture
def zookeeper_server() -> Iterator[Callable[..., ZookeeperServer]]:
    """Factory: ``zookeeper_server()`` starts a private ZooKeeper; all are killed at teardown."""
    yield from _serve(ZookeeperServer)


@pytest.fixture
def memcached_server() -> Iterator[Callable[..., MemcachedServer]]:
    """Factory: ``memcached_server()`` starts a private memcached; all are killed at teardown."""
    yield from _serve(MemcachedServer)


@pytest.fixture
def postgres_server() -> Iterator[Callable[..., PostgresServer]]:
    """Factory: ``postgres_server()`` starts a private PostgreSQL; all are killed at teardown."""
    yield from _serve(PostgresServer)
