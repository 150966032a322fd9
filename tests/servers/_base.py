"""What every private server shares: a process on its own loopback port, owned by one test.

A ``Server`` is killed by pid when its test ends, when its ``with`` block ends, and, as a last
resort, when the interpreter exits. Also: the loopback helpers, bounded waits, and the body of the
factory fixtures.
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
from typing import Any, ClassVar, NoReturn, Protocol, Self, TypeVar
from urllib.parse import urlsplit

import pytest

HOST = "127.0.0.1"
REQUIRE_SERVERS_ENV = "AIODURABLEDICT_REQUIRE_SERVERS"

_T = TypeVar("_T")


def unavailable(reason: str) -> NoReturn:
    """Skip the current test because a server is missing, or fail it where servers are required (CI)."""
    if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVERS_ENV}=1)", pytrace=False)
    pytest.skip(reason)


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


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class ServerError(RuntimeError):
    """A private server did not start, or did not answer in time."""


class ServerExited(ServerError):
    """A private server exited while starting (often: its port was taken meanwhile)."""


def ask(port: int, request: bytes, timeout: float = 1.0) -> bytes:
    """Send ``request`` and return the first bytes of the reply (empty on any failure)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            return sock.recv(256)
    except OSError:
        return b""


def ask_all(port: int, request: bytes, timeout: float = 1.0) -> bytes:
    """Send ``request`` and return the whole reply, up to the server closing (empty on any failure)."""
    reply = b""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError:
        return b""
    return reply


def wait_for(what: str, check: Callable[[], _T | None], timeout: float, details: Callable[[], str]) -> _T:
    """Poll ``check`` until it returns something other than None/False; ``ServerError`` after ``timeout``
    seconds, saying ``what`` was awaited and ``details()`` (the state and the servers' log tails)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise ServerError(f"{what}: not within {timeout:g}s\n{details()}")
        time.sleep(0.1)


# Strong references: a server nobody holds any more must still be found and killed at exit.
_live: set[Server] = set()


@atexit.register
def _kill_leftovers() -> None:
    # Last resort: no server outlives the test run, even if a test forgot to clean up.
    for server in list(_live):
        server.close()


class Lifetime:
    """``with`` and ``async with`` for what starts and closes: a server, a group of servers."""

    def start(self) -> Self:
        raise NotImplementedError

    async def astart(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

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


class Server(Lifetime):
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

    @property
    def frozen(self) -> bool:
        """True between ``freeze()`` and ``thaw()`` (or a kill)."""
        return self._frozen and self.running

    @property
    def serving(self) -> bool:
        """True while the process runs and is not frozen: it can answer."""
        return self.running and not self._frozen

    # lifecycle

    def start(self) -> Self:
        """Start the server and wait until it answers; raises ``ServerError`` otherwise."""
        with self._lock:
            if self.running:
                return self
            attempts = 3 if self._auto_port and not self._started_once else 1
            for attempt in range(attempts):
                try:
                    self._launch()
                    self._wait_ready()
                except ServerError:
                    # The port picked by free_port() may have been taken meanwhile: pick another.
                    if attempt + 1 == attempts:
                        raise
                    self.port = free_port()
                else:
                    break
            self._started_once = True
            return self

    def launch(self) -> Self:
        """Start the process without waiting for it to answer (members of a group wait together:
        an ensemble's node cannot serve until enough of the others run too)."""
        with self._lock:
            if not self.running:
                self._launch()
                self._started_once = True
            return self

    def wait_ready(self) -> Self:
        """Wait until a launched server answers; ``ServerError`` (with its log tail) otherwise."""
        with self._lock:
            self._wait_ready()
            return self

    def _launch(self) -> None:
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

    def _wait_ready(self) -> None:
        proc = self._proc
        if proc is None:
            raise ServerError(f"{self.name} on {self.address} was never launched")
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready():
            if proc.poll() is not None:
                raise ServerExited(f"{self.name} exited with {proc.returncode}:\n{self.log_tail()}")
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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} pid={self.pid}>"


def which(program: str, *, hint: str) -> str:
    """The path of ``program``; the test is unavailable (skipped, or failed in CI) without it."""
    path = shutil.which(program)
    if path is None:
        unavailable(f"{program} is not installed ({hint})")
    return path


def service_user(*candidates: str) -> str:
    """The first of these users that exists (servers that refuse to run as root drop to it)."""
    import pwd

    for name in candidates:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ServerError(f"none of the users {candidates} exists")


class _Startable(Protocol):
    name: ClassVar[str]

    def start(self) -> Any: ...

    def close(self) -> None: ...


_S = TypeVar("_S", bound=_Startable)


def serve(cls: type[_S]) -> Iterator[Callable[..., _S]]:
    """The body of a factory fixture: each call starts one more ``cls``; all are closed at teardown."""
    started: list[_S] = []

    def make(**options: Any) -> _S:
        server = cls(**options)
        started.append(server)
        try:
            server.start()
        except ServerError as exc:
            unavailable(f"could not start a private {cls.name}: {exc}")
        return server

    try:
        yield make
    finally:
        for server in started:
            server.close()
