"""Helpers for the integration tests: the CLI as a subprocess, and a real uvicorn server on a free
loopback port in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]

CLI_TIMEOUT = 60.0


def with_query(url: str, **options: str) -> str:
    """``url`` with ``options`` added to its query string."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(options)) if q)
    return urlunsplit(parts._replace(query=query))


def cli_env(url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this interpreter's packages, and the store URL if given."""
    env = {k: v for k, v in os.environ.items() if k != "AIODURABLEDICT_URL"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if url is not None:
        env["AIODURABLEDICT_URL"] = url
    env.update(extra)
    return env


def run_cli(
    *args: str, url: str | None = None, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m aiodurabledict ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "aiodurabledict", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(url),
        cwd=cwd,
        timeout=CLI_TIMEOUT,
        check=False,
    )


async def arun_cli(*args: str, url: str | None = None, stdin: str | None = None) -> tuple[int, str, str]:
    """``run_cli`` without blocking the event loop (a server may be running in it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aiodurabledict",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(url),
    )
    async with asyncio.timeout(CLI_TIMEOUT):
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port (lifespan on); yield its base URL."""
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        try:
            await server.serve()
        except SystemExit as exc:
            # uvicorn exits the process when the app's startup fails; a test wants an exception.
            raise RuntimeError(f"uvicorn did not start: it exited with {exc.code}") from None

    task = asyncio.create_task(run())
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            if task.done():
                task.result()
            raise RuntimeError("uvicorn did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(30):
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
        if server.started and isinstance(outcome, BaseException):
            raise outcome


async def eventually(check: Callable[..., Any], *args: Any, attempts: int = 200, delay: float = 0.05) -> Any:
    """Retry an async ``check(*args)`` until it returns a truthy value; bounded. Returns the last result."""
    result: Any = None
    for _ in range(attempts):
        result = await check(*args)
        if result:
            return result
        await asyncio.sleep(delay)
    return result


def unique(prefix: str = "t") -> str:
    """A fresh name for a namespace."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"
