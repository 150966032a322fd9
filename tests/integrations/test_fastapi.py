"""A real FastAPI app served by uvicorn on loopback, driven with httpx: freshness, single flight, outages.

No ``from __future__ import annotations`` here: FastAPI must evaluate the routes' ``Depends(...)``
annotations, which name local variables.
"""

import asyncio
import logging
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection

from aiodurabledict import AsyncDurableDict, Change, open_dict
from aiodurabledict.backends.memory import MemoryDict, MemoryStore
from aiodurabledict.errors import BackendError
from aiodurabledict.fastapi import SyncMiddleware, lifespan, settings_view
from tests.integrations._helpers import arun_cli, eventually, serve, unique
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(120)


def flags_app(d: AsyncDurableDict[Any], **middleware: Any) -> FastAPI:
    """A FastAPI app whose ``/flags`` returns the dict as the handler sees it."""
    app = FastAPI()
    app.add_middleware(SyncMiddleware, dicts=[d], **middleware)

    @app.get("/flags")
    async def flags(view: Annotated[Mapping[str, Any], Depends(settings_view(d))]) -> dict[str, Any]:
        return dict(view)

    return app


async def test_a_change_made_by_the_cli_is_seen_by_the_next_request(store_url: str) -> None:
    """Another process (the CLI) sets a flag; the very next request sees it (no watcher: synced per request)."""
    d = open_dict(store_url, watch=False)
    async with serve(flags_app(d)) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/flags")).json() == {}
        code, _, err = await arun_cli("set", "beta", "true", url=store_url)
        assert code == 0, err
        assert (await client.get("/flags")).json() == {"beta": True}
        code, _, err = await arun_cli("delete", "beta", url=store_url)
        assert code == 0, err
        assert (await client.get("/flags")).json() == {}
    assert not d.status.open


async def test_with_a_watcher_a_change_by_the_cli_arrives_without_asking(store_url: str) -> None:
    """With the watcher on, a change from another process reaches the served app on its own."""
    d = open_dict(store_url, heartbeat=0.5, poll_interval=0.05)
    async with serve(flags_app(d)) as base, httpx.AsyncClient(base_url=base) as client:
        code, _, err = await arun_cli("set", "beta", '"on"', url=store_url)
        assert code == 0, err

        async def seen() -> bool:
            return bool((await client.get("/flags")).json() == {"beta": "on"})

        assert await eventually(seen)


N_CONCURRENT = 1000


class Arrivals:
    """ASGI wrapper that counts the HTTP requests reaching the app; ``all_in`` is set at ``n``."""

    def __init__(self, app: Any, n: int) -> None:
        self.app = app
        self.n = n
        self.arrived = 0
        self.all_in = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.arrived += 1
            if self.arrived == self.n:
                self.all_in.set()
        await self.app(scope, receive, send)


async def concurrent_gets(
    base: str, arrivals: Arrivals, hold: Callable[[], None], release: Callable[[], None]
) -> list[httpx.Response]:
    """Send ``arrivals.n`` GET /flags at once; ``hold`` the store until all have reached the app."""
    n = arrivals.n
    # One connection per request, so that all of them can be in flight at once; spread over 20
    # clients because an httpx pool slows down steeply with the number of connections it holds.
    limits = httpx.Limits(max_connections=n // 20 + 5)
    clients = [httpx.AsyncClient(base_url=base, limits=limits, timeout=100) for _ in range(20)]
    try:
        # The store is held still until every request has reached the middleware, so that all of
        # them wait on the same sync whatever the machine's speed.
        hold()
        try:
            requests = [asyncio.create_task(clients[i % 20].get("/flags")) for i in range(n)]
            async with asyncio.timeout(100):
                await arrivals.all_in.wait()
        finally:
            release()
        return await asyncio.gather(*requests)
    finally:
        for client in clients:
            await client.aclose()


async def test_a_thousand_concurrent_requests_make_two_round_trips() -> None:
    """1,000 requests arriving while the first one's check is in flight share one check, sent after
    they arrived (read-after-commit): the store counts two round trips, not 1,000."""
    store = MemoryStore()
    d: MemoryDict[Any] = MemoryDict(store, watch=False, timeout=100)
    arrivals = Arrivals(flags_app(d, sync_timeout=None), N_CONCURRENT)
    async with serve(arrivals) as base, MemoryDict[Any](store, watch=False) as writer:
        await writer.set("flag", "on")
        before = store.round_trips

        def hold() -> None:
            store.frozen = True

        def release() -> None:
            store.frozen = False

        responses = await concurrent_gets(base, arrivals, hold, release)
        trips = store.round_trips - before
    assert [r.status_code for r in responses] == [200] * N_CONCURRENT
    assert all(r.json() == {"flag": "on"} for r in responses)
    assert trips == 2


@pytest.mark.slow
@pytest.mark.faults
async def test_a_thousand_concurrent_requests_cost_redis_what_two_syncs_cost(
    redis_server: Callable[..., RedisServer],
) -> None:
    """On a real Redis (frozen with SIGSTOP while the requests arrive), 1,000 concurrent requests
    make the server process exactly the commands of two syncs (counted by INFO): the first request's
    (which finds the change), and one sent after the others arrived, which they share (which finds
    nothing new)."""
    from redis.asyncio import Redis

    redis = redis_server()
    url = f"{redis.url}?keyspace={unique()}"
    d = open_dict(url, watch=False, timeout=100)
    arrivals = Arrivals(flags_app(d, sync_timeout=None), N_CONCURRENT)
    admin: Any = Redis.from_url(redis.url)

    async def processed() -> int:
        # INFO counts itself in the next reading: subtract one per reading taken in between.
        return int((await admin.info("stats"))["total_commands_processed"])

    try:
        async with serve(arrivals) as base, open_dict(url, watch=False) as writer:
            # The first sync on a connection may load scripts: measure a warm one.
            await writer.set("flag", "one")
            assert await d.sync()
            await writer.set("flag", "two")
            start = await processed()
            assert await d.sync()
            one_sync = await processed() - start - 1
            start = await processed()
            assert not await d.sync()
            unchanged_sync = await processed() - start - 1
            await writer.set("flag", "on")
            start = await processed()
            responses = await concurrent_gets(base, arrivals, redis.freeze, redis.thaw)
            spent = await processed() - start - 1
    finally:
        redis.thaw()
        await admin.aclose()
    assert [r.status_code for r in responses] == [200] * N_CONCURRENT
    assert all(r.json() == {"flag": "on"} for r in responses)
    assert one_sync >= 1
    # The first request's check finds the change; the one shared by the 999 others finds nothing new.
    assert spent == one_sync + unchanged_sync, (
        f"1,000 requests made Redis process {spent} commands; the two checks take {one_sync} + {unchanged_sync}"
    )


@pytest.mark.slow
@pytest.mark.faults
async def test_store_killed_requests_run_on_stale_values_and_503_past_max_staleness(
    redis_server: Callable[..., RedisServer],
) -> None:
    """Redis killed: a lenient app keeps answering from its last values; an app with ``max_staleness``
    answers them until the bound passes, then 503; both recover when Redis comes back."""
    redis = redis_server(persistent=True)
    url = f"{redis.url}?keyspace={unique()}&socket_timeout=1&socket_connect_timeout=1"
    lenient = open_dict(url, heartbeat=0.2, timeout=1)
    strict = open_dict(url, heartbeat=0.2, timeout=1, max_staleness=2)
    async with (
        open_dict(url, watch=False) as writer,
        serve(flags_app(lenient)) as lenient_base,
        serve(flags_app(strict)) as strict_base,
        httpx.AsyncClient(timeout=30) as client,
    ):
        await writer.set("mode", "normal")

        async def both_see(value: str) -> bool:
            for base in (lenient_base, strict_base):
                response = await client.get(f"{base}/flags")
                if response.status_code != 200 or response.json() != {"mode": value}:
                    return False
            return True

        assert await eventually(both_see, "normal")
        redis.kill()

        # Within the bound, both serve the last known values.
        assert (await client.get(f"{strict_base}/flags")).json() == {"mode": "normal"}
        for _ in range(5):
            response = await client.get(f"{lenient_base}/flags")
            assert response.status_code == 200
            assert response.json() == {"mode": "normal"}

        async def strict_refuses() -> httpx.Response | None:
            response = await client.get(f"{strict_base}/flags")
            return response if response.status_code == 503 else None

        refused = await eventually(strict_refuses, attempts=300, delay=0.1)
        assert refused is not None
        assert refused.json()["error"] == "stale"
        lenient_response = await client.get(f"{lenient_base}/flags")
        assert lenient_response.status_code == 200
        assert lenient_response.json() == {"mode": "normal"}

        await redis.astart()

        async def write_recovered() -> bool:
            # The writer's pooled connection died with the server: a write may fail once.
            try:
                await writer.set("mode", "recovered")
            except BackendError:
                return False
            return True

        assert await eventually(write_recovered)
        assert await eventually(both_see, "recovered", attempts=300, delay=0.1)


async def test_a_follower_reconfigures_logging_levels_at_run_time(store_url: str) -> None:
    """A change callback started by the lifespan sets logger levels as another process edits them."""
    prefix = unique("app")
    levels = open_dict(store_url, heartbeat=0.5, poll_interval=0.05)

    def apply(change: Change[Any]) -> None:
        logger = logging.getLogger(change.key)
        logger.setLevel(change.new if isinstance(change.new, str) else logging.NOTSET)

    app = FastAPI(lifespan=lifespan(levels, followers=[(levels, apply)]))

    @app.get("/level/{name}")
    async def level(name: str) -> int:
        return logging.getLogger(name).level

    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        code, _, err = await arun_cli("set", f"{prefix}.db", '"DEBUG"', url=store_url)
        assert code == 0, err

        async def level_is(value: int) -> bool:
            return bool((await client.get(f"/level/{prefix}.db")).json() == value)

        assert await eventually(level_is, logging.DEBUG)
        code, _, err = await arun_cli("delete", f"{prefix}.db", url=store_url)
        assert code == 0, err
        assert await eventually(level_is, logging.NOTSET)


async def test_the_dependency_without_middleware_syncs_and_refuses_past_max_staleness() -> None:
    """``settings_view`` alone syncs per request, hands a read-only view, and turns ``StaleError`` into 503."""
    store = MemoryStore()
    d: MemoryDict[Any] = MemoryDict(store, watch=False, max_staleness=0.05)
    app = FastAPI()
    attempts: list[str] = []

    @app.get("/flags")
    async def flags(view: Annotated[Mapping[str, Any], Depends(settings_view(d))]) -> dict[str, Any]:
        try:
            view["x"] = 1  # type: ignore[index]
        except TypeError:
            attempts.append("refused")
        return dict(view)

    transport = httpx.ASGITransport(app=app)
    async with (
        d,
        MemoryDict[Any](store, watch=False) as writer,
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        await writer.set("a", 1)
        assert (await client.get("/flags")).json() == {"a": 1}
        assert attempts == ["refused"]
        store.failing = True
        await asyncio.sleep(0.1)
        response = await client.get("/flags")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        store.failing = False


async def test_middleware_and_dependency_together_sync_once_per_request() -> None:
    """The dependency does not sync again what the middleware synced for the same request."""
    store = MemoryStore()
    d: MemoryDict[Any] = MemoryDict(store, watch=False)
    transport = httpx.ASGITransport(app=flags_app(d))
    async with d, httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        before = store.round_trips
        for _ in range(3):
            assert (await client.get("/flags")).status_code == 200
        assert store.round_trips - before == 3


async def test_an_unreachable_store_fails_the_servers_startup(unused_port: int) -> None:
    """uvicorn does not start serving when a dict cannot be opened at startup; nothing stays open."""
    d = open_dict(f"redis://127.0.0.1:{unused_port}/0?keyspace=x", timeout=1)
    with pytest.raises(RuntimeError, match="did not start"):
        async with serve(flags_app(d)):
            pass
    assert not d.status.open


def test_the_dependency_is_typed_by_the_dicts_value_type() -> None:
    """``settings_view(d)`` on a dict of ``V`` gives ``Mapping[str, V]`` (mypy checks the assignment),
    and asks FastAPI only for the connection, so it works in HTTP and WebSocket routes alike."""
    d: MemoryDict[int] = MemoryDict()
    dependency: Callable[[HTTPConnection], Awaitable[Mapping[str, int]]] = settings_view(d)
    hints = typing.get_type_hints(dependency)
    assert hints["connection"] is HTTPConnection
    assert typing.get_origin(hints["return"]) is Mapping
