"""The ASGI middleware's cost: requests per second with and without ``SyncMiddleware`` under uvicorn
on loopback (the dict's push watcher live), and the worst request latency while the store is frozen
(a private Redis stopped with SIGSTOP) against the middleware's ``sync_timeout``.

Goals: with the middleware, at least 95 % of the requests per second without it; while the store is
frozen, no request slower than ``sync_timeout`` + 10 ms beyond what the bare app takes under the same
load (its worst latency, measured in the same run). The load comes from another process.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from benchmarks._harness import Report, compare_async, timing_of

GROUP = "asgi"
SYNC_TIMEOUT = 0.1

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]


async def hello(scope: Scope, receive: Any, send: Any) -> None:
    """The smallest ASGI app: 200, two bytes (lifespan accepted)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serving(app: App) -> Any:
    """``app`` under uvicorn on a free loopback port, in this process; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def load(
    url: str, seconds: float, connections: int, before: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run the load generator in another process (so that it does not share this one's loop).

    Each connection makes one request first (connected, code paths warm); then ``before`` runs and
    the measured requests start.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_asgi", "load", url, str(seconds), str(connections),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    ready = await process.stdout.readline()
    if ready != b"ready\n":
        await process.wait()
        raise RuntimeError(f"the load generator failed ({ready!r})")
    if before is not None:
        before()
    process.stdin.write(b"go\n")
    await process.stdin.drain()
    out, _ = await process.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


async def _generate(url: str, seconds: float, connections: int) -> None:
    import httpx

    latencies: list[float] = []

    async def client(http: httpx.AsyncClient, deadline: float) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await http.get("/")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.status_code

    # Every client is made and connected before the clock starts: making one blocks the loop for
    # tens of milliseconds (its TLS context), which would land on the requests of the others.
    clients = [httpx.AsyncClient(base_url=url, timeout=30) for _ in range(connections)]
    try:
        for http in clients:
            (await http.get("/")).raise_for_status()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        started = time.monotonic()
        await asyncio.gather(*(client(http, started + seconds) for http in clients))
        elapsed = time.monotonic() - started
    finally:
        for http in clients:
            await http.aclose()
    print(json.dumps({"requests": len(latencies), "seconds": elapsed, "latencies": latencies}))


async def run(report: Report, quick: bool) -> None:
    """Requests per second with and without the middleware, and the frozen store's worst latency."""
    from redis.asyncio import Redis

    from aiodurabledict.asgi import SyncMiddleware
    from aiodurabledict.backends.redis import RedisDict
    from tests.servers import RedisServer

    seconds, rounds, connections = (1.0, 1, 8) if quick else (4.0, 5, 16)
    server = RedisServer()
    await server.astart()
    client = Redis.from_url(server.url)
    try:
        async with RedisDict("bench-asgi", client, heartbeat=60) as settings:
            await settings.set("feature_x", True)
            await settings.wait_live(timeout=10)
            bare: list[float] = []
            synced: list[float] = []
            bare_worst: list[float] = []
            for _ in range(rounds):
                for app, into in ((hello, bare), (SyncMiddleware(hello, [settings], lifespan=False), synced)):
                    async with serving(app) as url:
                        result = await load(url, seconds, connections)
                    into.append(result["seconds"] / result["requests"] * 1e9)
                    if app is hello:
                        bare_worst.append(max(result["latencies"]))
            without, with_ = timing_of(bare), timing_of(synced)
            await _in_process(report, settings, quick)
            report.add(
                GROUP,
                "SyncMiddleware, push watcher live: time per request (uvicorn, loopback)",
                with_,
                baseline="the same app without the middleware",
                baseline_timing=without,
                note=f"{1e9 / with_.median:,.0f} vs {1e9 / without.median:,.0f} requests/s; goal ≥ 95 %",
            )
        async with RedisDict("bench-asgi", client, watch=False, timeout=30) as frozen_dict:
            app = SyncMiddleware(hello, [frozen_dict], lifespan=False, sync_timeout=SYNC_TIMEOUT)
            async with serving(app) as url:
                try:
                    result = await load(url, seconds, connections, before=server.freeze)
                finally:
                    server.thaw()
            worst = max(result["latencies"])
            median = statistics.median(result["latencies"])
            # Under this load a request waits for the others' responses too: the bound is measured
            # against sync_timeout plus the worst latency of the bare app under the same load.
            served = statistics.median(bare_worst)
            report.add(
                GROUP,
                "request while the store is frozen (SIGSTOP): worst latency",
                worst * 1e9,
                baseline="sync_timeout + the bare app's worst latency under the same load",
                baseline_timing=(SYNC_TIMEOUT + served) * 1e9,
                p99=False,
                note=(
                    f"{result['requests']} requests from {connections} connections, all 200 on cached"
                    f" values, median {median * 1e3:.1f} ms; sync_timeout {SYNC_TIMEOUT * 1e3:.0f} ms,"
                    f" bare worst {served * 1e3:.1f} ms; goal ≤ baseline + 10 ms"
                ),
            )
    finally:
        await client.aclose()
        server.close()


async def _in_process(report: Report, settings: Any, quick: bool) -> None:
    """The middleware's own cost per request, without a server or a client: the app called directly,
    with and without it, in alternation."""
    from aiodurabledict.asgi import SyncMiddleware

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(_message: Any) -> None:
        return None

    wrapped = SyncMiddleware(hello, [settings], lifespan=False)

    async def with_middleware() -> None:
        await wrapped({"type": "http", "path": "/"}, receive, send)

    async def bare() -> None:
        await hello({"type": "http", "path": "/"}, receive, send)

    repeats, inner = (5, 2_000) if quick else (30, 20_000)
    timing, base = await compare_async(with_middleware, bare, repeats=repeats, inner=inner)
    report.add(
        GROUP,
        "SyncMiddleware, push watcher live: one request, in process (no server, no client)",
        timing,
        baseline="the same app called directly",
        baseline_timing=base,
        note=f"the middleware's own cost: {(timing.median - base.median) / 1e3:.2f} µs per request",
    )


if __name__ == "__main__" and sys.argv[1:2] == ["load"]:
    asyncio.run(_generate(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
