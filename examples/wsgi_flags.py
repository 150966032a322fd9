"""Feature flags in a plain WSGI app under gunicorn with several sync (forking) workers.

The app reads its flags through the blocking dict (`aiodurabledict.blocking`): durabledict's API, no
event loop to manage. `make_app()` opens the dict once; with gunicorn's `--preload` that happens in
the master, before the workers are forked, and each worker reopens it at its first request (a dict
opened with `blocking.open_dict` does that by itself). A flag flipped from anywhere (here the CLI, in
another process) is seen by every worker: reads check the store first when it cannot push (SQLite),
and follow its notices when it can (Redis, PostgreSQL, ZooKeeper).

Serve it yourself:

    AIODURABLEDICT_URL='redis://127.0.0.1:6379/0?keyspace=flags' \\
        gunicorn --preload --workers 3 --chdir examples 'wsgi_flags:make_app()'
    python -m aiodurabledict --url 'redis://127.0.0.1:6379/0?keyspace=flags' set new_checkout true

Run it as a script (`python examples/wsgi_flags.py`) and it starts gunicorn on a free loopback port
with 3 workers (flags in a temporary SQLite file, or in $AIODURABLEDICT_URL), flips a flag with the
CLI, checks that every worker serves the new value, stops gunicorn and exits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from aiodurabledict import blocking

HERE = Path(__file__).resolve().parent
FLAG = "new_checkout"


def make_app(url: str | None = None) -> WSGIApplication:
    """The WSGI app: ``GET /flags/NAME`` answers ``{"pid", "opened_in", "name", "value"}`` as JSON.

    ``opened_in`` is the pid of the process that opened the dict: the master's under ``--preload``.
    """
    flags = blocking.open_dict(url or os.environ["AIODURABLEDICT_URL"])
    opened_in = os.getpid()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if not path.startswith("/flags/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        name = path.removeprefix("/flags/")
        # A read in the worker's own thread: a lookup in the cache (a version check first when the
        # store cannot push).
        answer = {"pid": os.getpid(), "opened_in": opened_in, "name": name, "value": flags.get(name)}
        body = json.dumps(answer).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


# -- running it under gunicorn (the script below, and the tests) ----------------------------------------


@dataclass
class Server:
    """A gunicorn we started: its master process, its port and its log."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def worker_pids(self) -> set[int]:
        """The workers gunicorn booted, from its log."""
        text = self.log.read_text(errors="replace")
        return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", text)}

    def ask(self, name: str) -> dict[str, Any]:
        """One request for flag ``name``: the answer of whichever worker took it (an error carries
        the tail of gunicorn's log, where the worker's traceback is)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/flags/{name}", timeout=10) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{exc}; gunicorn's log ends:\n{tail}") from exc


@contextmanager
def gunicorn(url: str, *, workers: int = 3, preload: bool = True, timeout: float = 60) -> Iterator[Server]:
    """gunicorn serving ``make_app()`` on a free loopback port with ``workers`` sync workers, every
    one of them booted; stopped (SIGTERM, then SIGKILL if it lingers) on the way out."""
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "gunicorn.log"
        log.touch()
        args = [
            sys.executable, "-m", "gunicorn",
            "--bind", "127.0.0.1:0",
            "--workers", str(workers),
            "--worker-class", "sync",
            "--graceful-timeout", "10",
            "--error-logfile", str(log),
            "--chdir", str(HERE),
            *(["--preload"] if preload else []),
            "wsgi_flags:make_app()",
        ]  # fmt: skip
        env = {**os.environ, "AIODURABLEDICT_URL": url}
        process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            server: Server | None = None
            while server is None or len(server.worker_pids()) < workers:
                if process.poll() is not None:
                    raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gunicorn did not boot {workers} workers:\n{log.read_text()}")
                found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text())
                if server is None and found:
                    server = Server(process, int(found[1]), log)
                time.sleep(0.05)
            yield server
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the gunicorn we started: SIGTERM lets the workers finish; SIGKILL if it takes too long."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def every_worker_sees(server: Server, name: str, value: Any, *, within: float = 30) -> dict[int, Any]:
    """Ask until each worker has answered ``value`` for flag ``name``; its answers by pid.

    Requests go four at a time, so that a busy worker leaves the next one to another. Raises
    ``TimeoutError`` when some worker has not within ``within`` seconds."""
    workers = server.worker_pids()
    seen: dict[int, Any] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + within

    def ask() -> None:
        answer = server.ask(name)
        if answer["value"] == value:
            with lock:
                seen[answer["pid"]] = answer

    with ThreadPoolExecutor(4) as pool:
        while not workers <= seen.keys():
            if time.monotonic() > deadline:
                missing = sorted(workers - seen.keys())
                raise TimeoutError(f"workers {missing} did not serve {name}={value!r} within {within} s")
            for future in [pool.submit(ask) for _ in range(8)]:
                future.result()
    return seen


def cli(url: str, *args: str) -> None:
    """``python -m aiodurabledict --url URL ARGS``, in a process of its own."""
    subprocess.run([sys.executable, "-m", "aiodurabledict", "--url", url, *args], check=True, timeout=60)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = os.environ.get("AIODURABLEDICT_URL") or f"sqlite:///{Path(folder) / 'flags.db'}"
        cli(url, "set", FLAG, "false")
        with gunicorn(url, workers=3, preload=True) as server:
            before = every_worker_sees(server, FLAG, False)
            print(f"gunicorn on port {server.port}: workers {sorted(before)} serve {FLAG}=false")
            assert all(answer["opened_in"] == server.process.pid for answer in before.values())
            print(f"  the dict was opened in the master ({server.process.pid}), reopened in each worker")
            cli(url, "set", FLAG, "true")
            print(f"the CLI set {FLAG}=true")
            after = every_worker_sees(server, FLAG, True)
            print(f"  workers {sorted(after)} serve {FLAG}=true")
        cli(url, "delete", FLAG)
        print("gunicorn stopped")


if __name__ == "__main__":
    main()
