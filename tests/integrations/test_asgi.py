"""``SyncMiddleware``, the lifespan helpers and ``follow_changes``, driven over the ASGI protocol itself."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from aiodurabledict import MISSING, Change
from aiodurabledict.asgi import SyncMiddleware, follow_changes, lifespan, open_all
from aiodurabledict.backends.memory import MemoryDict, MemoryStore
from aiodurabledict.testing.conformance import eventually as until
from tests.integrations._helpers import eventually

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SECRET = "value-that-must-never-be-logged"


class RecordingApp:
    """An ASGI app answering each HTTP request with the dict's view as JSON; records what it saw."""

    def __init__(self, d: MemoryDict[Any]) -> None:
        self.d = d
        self.calls = 0
        self.lifespan_events: list[tuple[str, bool]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rpartition(".")[2]
                self.lifespan_events.append((kind, self.d.status.open))
                await send({"type": f"{message['type']}.complete"})
                if kind == "shutdown":
                    return
        self.calls += 1
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": json.dumps(dict(self.d.view))})
            await send({"type": "websocket.close", "code": 1000})
            return
        body = json.dumps(dict(self.d.view)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def wait_connected(d: MemoryDict[Any]) -> None:
    """Until the dict's watcher follows the store live (bounded)."""
    for _ in range(500):
        if d.status.connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watcher did not connect")


async def http_get(app: Any, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get(path)


async def websocket_session(app: Any, extensions: dict[str, Any] | None = None) -> list[Message]:
    """Open one WebSocket to ``app`` over ASGI; return every message the app sent."""
    sent: list[Message] = []
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    await incoming.put({"type": "websocket.connect"})
    scope = {"type": "websocket", "path": "/ws", "headers": [], "extensions": extensions or {}}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] in {"websocket.close", "websocket.http.response.body"}:
            await incoming.put({"type": "websocket.disconnect", "code": 1000})

    async with asyncio.timeout(10):
        await app(scope, incoming.get, send)
    return sent


@asynccontextmanager
async def running_lifespan(app: Any) -> AsyncIterator[list[Message]]:
    """Run the ASGI lifespan protocol against ``app``: startup on entry, shutdown on exit."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: list[Message] = []
    got: asyncio.Queue[Message] = asyncio.Queue()

    async def send(message: Message) -> None:
        from_app.append(message)
        await got.put(message)

    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, to_app.get, send)
    )
    async with asyncio.timeout(10):
        await to_app.put({"type": "lifespan.startup"})
        await got.get()
    try:
        yield from_app
    finally:
        async with asyncio.timeout(10):
            if from_app[-1]["type"] == "lifespan.startup.complete":
                await to_app.put({"type": "lifespan.shutdown"})
                await got.get()
            await asyncio.gather(task, return_exceptions=True)


async def test_each_request_sees_what_was_committed_before_it() -> None:
    """Without a watcher, the middleware syncs before the app runs: one round trip per request."""
    store = MemoryStore()
    async with MemoryDict[Any](store, watch=False) as d, MemoryDict[Any](store, watch=False) as other:
        app = SyncMiddleware(RecordingApp(d), dicts=[d])
        await other.set("flag", True)
        before = store.round_trips
        response = await http_get(app)
        assert response.json() == {"flag": True}
        assert store.round_trips - before == 1


async def test_with_a_live_watcher_a_request_costs_no_round_trip() -> None:
    """While the watcher follows the store, the middleware's sync makes no round trip."""
    store = MemoryStore()
    async with MemoryDict[Any](store) as d:
        app = SyncMiddleware(RecordingApp(d), dicts=[d])
        await wait_connected(d)
        before = store.round_trips
        for _ in range(5):
            assert (await http_get(app)).status_code == 200
        assert store.round_trips == before


async def test_store_down_requests_run_on_cached_values(caplog: pytest.LogCaptureFixture) -> None:
    """With the store failing and no ``max_staleness``, requests run on the last values; no value is logged."""
    caplog.set_level(logging.DEBUG, logger="aiodurabledict")
    store = MemoryStore()
    async with MemoryDict[Any](store, watch=False) as d:
        await d.set("secret", SECRET)
        inner = RecordingApp(d)
        app = SyncMiddleware(inner, dicts=[d])
        store.failing = True
        for _ in range(3):
            response = await http_get(app)
            assert response.status_code == 200
            assert response.json() == {"secret": SECRET}
        store.failing = False
    assert inner.calls == 3
    assert any("cached values" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


async def stale_dict(store: MemoryStore) -> MemoryDict[Any]:
    """An open dict whose store fails and whose ``max_staleness`` has already passed."""
    d: MemoryDict[Any] = MemoryDict(store, watch=False, max_staleness=0.05)
    await d.open()
    await d.set("k", 1)
    store.failing = True
    await asyncio.sleep(0.1)
    return d


async def test_past_max_staleness_http_gets_503_and_the_app_is_not_called() -> None:
    """Past ``max_staleness`` an HTTP request gets 503 with a JSON body naming the cause."""
    store = MemoryStore()
    d = await stale_dict(store)
    try:
        inner = RecordingApp(d)
        response = await http_get(SyncMiddleware(inner, dicts=[d]))
        assert response.status_code == 503
        assert response.json()["error"] == "stale"
        assert response.headers["retry-after"] == "1"
        assert inner.calls == 0
    finally:
        store.failing = False
        await d.aclose()


async def test_past_max_staleness_websocket_gets_503_where_the_server_allows() -> None:
    """A WebSocket is refused with an HTTP 503 when the server offers ``websocket.http.response``."""
    store = MemoryStore()
    d = await stale_dict(store)
    try:
        inner = RecordingApp(d)
        sent = await websocket_session(SyncMiddleware(inner, dicts=[d]), {"websocket.http.response": {}})
        assert sent[0]["type"] == "websocket.http.response.start"
        assert sent[0]["status"] == 503
        assert json.loads(sent[1]["body"])["error"] == "stale"
        assert inner.calls == 0
    finally:
        store.failing = False
        await d.aclose()


async def test_past_max_staleness_websocket_is_closed_with_1013() -> None:
    """Without that extension the WebSocket is accepted and closed at once with 1013 (try again later)."""
    store = MemoryStore()
    d = await stale_dict(store)
    try:
        inner = RecordingApp(d)
        sent = await websocket_session(SyncMiddleware(inner, dicts=[d]))
        assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
        assert sent[1]["code"] == 1013
        assert inner.calls == 0
    finally:
        store.failing = False
        await d.aclose()


async def test_websocket_requests_are_synced_too() -> None:
    """A WebSocket connection sees what was committed before it opened."""
    store = MemoryStore()
    async with MemoryDict[Any](store, watch=False) as d, MemoryDict[Any](store) as other:
        await other.set("k", "v")
        sent = await websocket_session(SyncMiddleware(RecordingApp(d), dicts=[d]))
        assert json.loads(sent[1]["text"]) == {"k": "v"}


async def test_lifespan_opens_dicts_before_the_apps_startup_and_closes_after_its_shutdown() -> None:
    """The app's own startup and shutdown see the dicts open; they are closed once it is done."""
    store = MemoryStore()
    d: MemoryDict[Any] = MemoryDict(store)
    inner = RecordingApp(d)
    async with running_lifespan(SyncMiddleware(inner, dicts=[d])) as messages:
        assert messages[0]["type"] == "lifespan.startup.complete"
        assert d.status.open
    assert [m["type"] for m in messages] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert inner.lifespan_events == [("startup", True), ("shutdown", True)]
    assert not d.status.open


async def test_lifespan_makes_no_sync() -> None:
    """The lifespan costs exactly an ``open()``: the middleware never syncs on a lifespan scope."""
    plain_store, store = MemoryStore(), MemoryStore()
    async with MemoryDict[Any](plain_store):
        pass
    d: MemoryDict[Any] = MemoryDict(store, watch=False)
    async with running_lifespan(SyncMiddleware(RecordingApp(d), dicts=[d])):
        pass
    assert store.round_trips == plain_store.round_trips


async def test_lifespan_for_an_app_that_does_not_speak_it() -> None:
    """An app that raises on the lifespan scope still gets its dicts opened and closed."""
    store = MemoryStore()
    d: MemoryDict[Any] = MemoryDict(store)

    async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"

    async with running_lifespan(SyncMiddleware(http_only, dicts=[d])) as messages:
        assert d.status.open
    assert [m["type"] for m in messages] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not d.status.open


async def test_startup_fails_when_a_dict_cannot_open_and_none_stays_open() -> None:
    """A dict whose store is down fails the startup; the dicts opened before it are closed again."""
    good, bad = MemoryStore(), MemoryStore()
    bad.failing = True
    first: MemoryDict[Any] = MemoryDict(good)
    second: MemoryDict[Any] = MemoryDict(bad)
    inner = RecordingApp(first)
    async with running_lifespan(SyncMiddleware(inner, dicts=[first, second])) as messages:
        pass
    assert messages[0]["type"] == "lifespan.startup.failed"
    assert "cannot open a dict" in messages[0]["message"]
    assert not first.status.open
    assert not second.status.open
    assert inner.lifespan_events == []


async def test_lifespan_false_leaves_opening_to_the_application() -> None:
    """With ``lifespan=False`` the lifespan scope passes through and the dicts stay closed."""
    d: MemoryDict[Any] = MemoryDict(MemoryStore())
    inner = RecordingApp(d)
    async with running_lifespan(SyncMiddleware(inner, dicts=[d], lifespan=False)):
        assert not d.status.open
    assert inner.lifespan_events == [("startup", False), ("shutdown", False)]


def test_middleware_needs_a_dict() -> None:
    """An empty ``dicts`` is a mistake, reported at once."""
    with pytest.raises(ValueError, match="at least one dict"):
        SyncMiddleware(RecordingApp(MemoryDict()), dicts=[])


async def test_open_all_is_all_or_none() -> None:
    """``open_all`` opens every dict or, when one fails, closes those it opened and raises."""
    bad = MemoryStore()
    bad.failing = True
    ok: MemoryDict[Any] = MemoryDict()
    failing: MemoryDict[Any] = MemoryDict(bad)
    with pytest.raises(Exception, match="failing"):
        async with open_all(ok, failing):
            pass
    assert not ok.status.open
    again: MemoryDict[Any] = MemoryDict()
    async with open_all(again):
        assert again.status.open
    assert not again.status.open


async def test_follow_changes_delivers_every_change_and_survives_a_failing_callback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each change reaches the callback; one that raises is logged with its key (never the value)."""
    store = MemoryStore()
    seen: list[Change[Any]] = []
    delivered = asyncio.Event()

    async def callback(change: Change[Any]) -> None:
        if change.key == "boom":
            raise RuntimeError("callback failed")
        seen.append(change)
        if change.key == "last":
            delivered.set()

    async with MemoryDict[Any](store) as d, follow_changes(d, callback, name="test-follower") as task:
        await d.set("a", 1)
        await d.set("boom", SECRET)
        await d.set("last", 2)
        async with asyncio.timeout(10):
            await delivered.wait()
        assert not task.done()
    assert [(c.key, c.old, c.new) for c in seen] == [("a", MISSING, 1), ("last", MISSING, 2)]
    failures = [r for r in caplog.records if "test-follower" in r.getMessage()]
    assert len(failures) == 1
    assert "'boom'" in failures[0].getMessage()
    assert SECRET not in caplog.text


async def test_lifespan_helper_opens_closes_and_followers_see_the_first_load() -> None:
    """``lifespan(d, followers=...)`` opens ``d`` for the app's life; a follower also sees existing entries."""
    store = MemoryStore()
    async with MemoryDict[Any](store) as seed:
        await seed.update({"app": "INFO", "db": "WARNING"})
    d: MemoryDict[Any] = MemoryDict(store)
    levels: dict[str, Any] = {}
    both = asyncio.Event()

    def apply(change: Change[Any]) -> None:
        levels[change.key] = change.new
        if len(levels) == 3:
            both.set()

    async with lifespan(d, followers=[(d, apply)])(None):
        assert d.status.open
        async with MemoryDict[Any](store) as writer:
            await writer.set("web", "DEBUG")
        async with asyncio.timeout(10):
            await both.wait()
    assert not d.status.open
    assert levels == {"app": "INFO", "db": "WARNING", "web": "DEBUG"}


async def test_several_dicts_are_synced_together_and_any_stale_one_refuses() -> None:
    """With two dicts, each request syncs both (one round trip each); if either is past its
    ``max_staleness`` the request gets 503."""
    flags_store, limits_store = MemoryStore(), MemoryStore()
    async with (
        MemoryDict[Any](flags_store, watch=False) as flags,
        MemoryDict[Any](limits_store, watch=False, max_staleness=0.05) as limits,
    ):
        inner = RecordingApp(flags)
        app = SyncMiddleware(inner, dicts=[flags, limits])
        before = (flags_store.round_trips, limits_store.round_trips)
        assert (await http_get(app)).status_code == 200
        assert (flags_store.round_trips - before[0], limits_store.round_trips - before[1]) == (1, 1)
        limits_store.failing = True
        await asyncio.sleep(0.1)
        assert (await http_get(app)).status_code == 503
        assert inner.calls == 1
        limits_store.failing = False

        async def served() -> bool:
            # The dict waits a moment after a failure before it asks the store again.
            return (await http_get(app)).status_code == 200

        assert await eventually(served)


async def test_a_request_never_waits_out_a_frozen_store() -> None:
    """With the store frozen (no answer, no error) and a 30 s store timeout, a request is answered
    while the store is still frozen: it waits sync_timeout, then runs on the cached values."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False, timeout=30) as d:
        await d.set("k", "cached")
        inner = RecordingApp(d)
        app = SyncMiddleware(inner, dicts=[d], sync_timeout=0.05)
        store.frozen = True
        try:
            async with asyncio.timeout(10):
                responses = await asyncio.gather(*(http_get(app) for _ in range(20)))
            assert store.frozen
            assert [r.status_code for r in responses] == [200] * 20
            assert all(r.json() == {"k": "cached"} for r in responses)
        finally:
            store.frozen = False


async def test_once_a_check_goes_unanswered_requests_neither_wait_nor_pile_checks() -> None:
    """A check that outlived sync_timeout marks the store slow for that dict: until it ends, later
    requests (even through a middleware with a 60 s sync_timeout) are answered at once on the cached
    values and send nothing; once it ends, requests check again."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False, timeout=30) as d:
        await d.set("k", "cached")
        first = SyncMiddleware(RecordingApp(d), dicts=[d], sync_timeout=0.05)
        patient = SyncMiddleware(RecordingApp(d), dicts=[d], sync_timeout=60)
        store.frozen = True
        try:
            assert (await http_get(first)).status_code == 200
            sent = store.round_trips
            async with asyncio.timeout(10):
                responses = [await http_get(patient) for _ in range(50)]
            assert [r.status_code for r in responses] == [200] * 50
            assert store.round_trips == sent
        finally:
            store.frozen = False

        async def checked_again() -> bool:
            return (await http_get(patient)).status_code == 200 and store.round_trips > sent

        assert await eventually(checked_again)


async def test_a_frozen_store_past_max_staleness_gets_503_within_the_bound() -> None:
    """A frozen store past max_staleness: the request gets its 503 after sync_timeout, not after the
    store's timeout."""
    store = MemoryStore()
    async with MemoryDict(store, watch=False, timeout=30, max_staleness=0.2) as d:
        app = SyncMiddleware(RecordingApp(d), dicts=[d], sync_timeout=0.05)
        store.frozen = True
        try:
            await asyncio.sleep(0.3)
            async with asyncio.timeout(10):
                response = await http_get(app)
            assert store.frozen
            assert response.status_code == 503
        finally:
            store.frozen = False


async def test_excluded_paths_pass_without_a_check_and_are_never_refused() -> None:
    """/health and what lies below it reach the app even past max_staleness, with no round trip;
    a path that only starts with the same letters is not excluded."""
    store = MemoryStore()
    d = await stale_dict(store)
    try:
        inner = RecordingApp(d)
        app = SyncMiddleware(inner, dicts=[d], exclude_paths=["/health", "/metrics/"])
        before = store.round_trips
        for path in ("/health", "/health/live", "/metrics", "/metrics/x"):
            assert (await http_get(app, path)).status_code == 200, path
        assert store.round_trips == before
        assert (await http_get(app, "/healthz")).status_code == 503
        assert inner.calls == 4
    finally:
        store.failing = False
        await d.aclose()


async def test_a_custom_stale_response() -> None:
    """stale_response replaces the default 503 for HTTP."""
    store = MemoryStore()
    d = await stale_dict(store)

    async def custom(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": [(b"x-why", b"settings")]})
        await send({"type": "http.response.body", "body": b"come back later"})

    try:
        response = await http_get(SyncMiddleware(RecordingApp(d), dicts=[d], stale_response=custom))
        assert response.status_code == 503
        assert response.text == "come back later"
        assert response.headers["x-why"] == "settings"
    finally:
        store.failing = False
        await d.aclose()


async def test_the_lifespan_helpers_live_outside_asgi_and_log_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """follow_changes, open_all and lifespan come from aiodurabledict.lifespan (and still from
    aiodurabledict.asgi); the lifespan helper logs each dict's changes of state."""
    from aiodurabledict import asgi
    from aiodurabledict import lifespan as lifespan_module

    for name in ("follow_changes", "open_all", "lifespan"):
        assert getattr(asgi, name) is getattr(lifespan_module, name)
    store = MemoryStore()
    d: MemoryDict[Any] = MemoryDict(store, heartbeat=0.05)
    with caplog.at_level(logging.INFO, logger="aiodurabledict"):
        async with lifespan_module.lifespan(d)(object()):
            await d.wait_live(timeout=5)
            store.failing = True
            await until(lambda: not d.live)
            store.failing = False
            await d.wait_live(timeout=5)
    lines = [r.getMessage() for r in caplog.records if r.filename == "lifespan.py"]
    assert [line.rpartition(" is ")[2].split(" ")[0] for line in lines] == [
        "live",
        "interrupted",
        "live",
        "closed",
    ]
