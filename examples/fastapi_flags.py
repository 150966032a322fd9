"""Feature flags in a FastAPI app: flip a flag from anywhere, and every worker sees it on its next request.

- `SyncMiddleware` opens the flags when the app starts (in each worker, after the fork), closes them
  when it stops, and makes sure each request sees every flag committed before it began.
- `settings_view(flags)` hands a handler a read-only `Mapping` of the flags: plain dict reads.
- `lifespan(flags, followers=...)` opens the flags at startup, logs their changes of state (live,
  interrupted, stale) and runs a callback on every change, here to log which flag moved.
- `bootstrap=DEFAULTS`: when the store cannot be reached at boot, the app starts anyway on the
  defaults (reported as interrupted) and takes the store's values the moment it answers.
- `await flags.wait_live(...)` at startup, `/health` (never synced nor refused) and `/ready` give a
  load balancer or an orchestrator the flags' state; `/metrics` exports the library's metrics to
  Prometheus through OpenTelemetry when the `otel` extra and the Prometheus exporter are installed.

Serve it: `uvicorn examples.fastapi_flags:app` (flags in $AIODURABLEDICT_URL, else ./flags.db), then
flip a flag from a shell: `aiodurabledict --url sqlite:///flags.db set new_checkout true`.

Run it as a script (`python examples/fastapi_flags.py`) and it serves itself on a free loopback
port with the flags in a temporary SQLite file, makes a few requests, and exits.
"""

import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Response

from aiodurabledict import Change, Health, open_dict
from aiodurabledict.fastapi import SyncMiddleware, lifespan, settings_view

log = logging.getLogger("flags")

DEFAULTS: dict[str, bool] = {"new_checkout": False, "dark_mode": False}


def create_app(url: str) -> FastAPI:
    """The app, its flags kept in the store at ``url``."""
    flags = open_dict(url, bootstrap=DEFAULTS)
    current_flags = Annotated[Mapping[str, Any], Depends(settings_view(flags))]

    def flag_moved(change: Change[Any]) -> None:
        # Keys only: values never go to logs.
        log.info("flag %r changed (store version %d)", change.key, change.version)

    @asynccontextmanager
    async def startup(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(flags, followers=[(flags, flag_moved)])(app):
            try:
                # Serve once the store has confirmed the flags, or after 5 s on what there is.
                await flags.wait_live(timeout=5)
            except TimeoutError:
                log.warning("starting while the flags are %s", flags.status.state.value)
            yield

    app = FastAPI(title="feature flags", lifespan=startup)
    # The lifespan above opens the flags; the middleware only syncs them for each request.
    app.add_middleware(SyncMiddleware, dicts=[flags], lifespan=False, exclude_paths=["/health", "/metrics"])
    mount_metrics(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The flags' state, since when and why (never a value)."""
        status = flags.status
        return {"state": status.state.value, "since": status.since, "error": status.error}

    @app.get("/ready")
    async def ready(response: Response) -> dict[str, str]:
        """200 once the store has confirmed the flags and they are followed; 503 before and after."""
        state = flags.status.state
        if state is not Health.LIVE:
            response.status_code = 503
        return {"state": state.value}

    @app.get("/flags")
    async def list_flags(current: current_flags) -> dict[str, Any]:
        """Every flag, defaults filled in."""
        return {**DEFAULTS, **current}

    @app.put("/flags/{name}")
    async def set_flag(name: str, enabled: bool) -> dict[str, bool]:
        """Flip a flag for every process."""
        await flags.set(name, enabled)
        return {name: enabled}

    @app.get("/checkout")
    async def checkout(current: current_flags) -> dict[str, str]:
        """A handler whose behaviour depends on a flag."""
        if current.get("new_checkout", DEFAULTS["new_checkout"]):
            return {"checkout": "new one-page checkout"}
        return {"checkout": "classic checkout"}

    return app


def mount_metrics(app: FastAPI) -> None:
    """``/metrics`` for Prometheus, when ``aiodurabledict[otel]`` and the exporter are installed."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import make_asgi_app

        from aiodurabledict import otel
    except ImportError:
        return
    otel.instrument(meter_provider=MeterProvider(metric_readers=[PrometheusMetricReader()]))
    app.mount("/metrics", make_asgi_app())


# For `uvicorn examples.fastapi_flags:app`. Building it does no I/O: the store opens at startup.
app = create_app(os.environ.get("AIODURABLEDICT_URL", "sqlite:///flags.db"))


async def demo(url: str) -> None:
    """Serve the app on a free loopback port, flip a flag through it, and show the effect."""
    config = uvicorn.Config(create_app(url), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if serving.done():
                    serving.result()
                    raise RuntimeError("the server stopped during startup")
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                print("ready:   ", (await client.get("/ready")).json())
                print("flags:   ", (await client.get("/flags")).json())
                print("checkout:", (await client.get("/checkout")).json())
                (await client.put("/flags/new_checkout", params={"enabled": True})).raise_for_status()
                print("flags:   ", (await client.get("/flags")).json())
                response = (await client.get("/checkout")).json()
                print("checkout:", response)
                assert response == {"checkout": "new one-page checkout"}

                # Another process flips a flag: the app's watcher brings it in.
                cli = [sys.executable, "-m", "aiodurabledict", "--url", url, "set", "dark_mode", "true"]
                assert await (await asyncio.create_subprocess_exec(*cli)).wait() == 0
                while not (await client.get("/flags")).json()["dark_mode"]:
                    await asyncio.sleep(0.05)
                print("flags:   ", (await client.get("/flags")).json(), "(dark_mode set by another process)")
                print("health:  ", (await client.get("/health")).json()["state"])
                metrics = await client.get("/metrics/")
                if metrics.status_code == 200:
                    lines = [
                        line for line in metrics.text.splitlines() if line.startswith("aiodurabledict_sync")
                    ]
                    print("metrics: ", *lines[:3], sep="\n  ")
    finally:
        server.should_exit = True
        await serving


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(demo(os.environ.get("AIODURABLEDICT_URL") or f"sqlite:///{Path(folder) / 'flags.db'}"))
