"""Feature flags in a FastAPI app: flip a flag from anywhere, and every worker sees it on its next request.

- `SyncMiddleware` opens the flags when the app starts (in each worker, after the fork), closes them
  when it stops, and makes sure each request sees every flag committed before it began.
- `settings_view(flags)` hands a handler a read-only `Mapping` of the flags: plain dict reads.
- `lifespan(..., followers=...)` runs a callback on every change, here to log which flag moved.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI

from aiodurabledict import Change, open_dict
from aiodurabledict.fastapi import SyncMiddleware, lifespan, settings_view

log = logging.getLogger("flags")

DEFAULTS: dict[str, bool] = {"new_checkout": False, "dark_mode": False}


def create_app(url: str) -> FastAPI:
    """The app, its flags kept in the store at ``url``."""
    flags = open_dict(url)
    current_flags = Annotated[Mapping[str, Any], Depends(settings_view(flags))]

    def flag_moved(change: Change[Any]) -> None:
        # Keys only: values never go to logs.
        log.info("flag %r changed (store version %d)", change.key, change.version)

    app = FastAPI(title="feature flags", lifespan=lifespan(followers=[(flags, flag_moved)]))
    app.add_middleware(SyncMiddleware, dicts=[flags])

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
    finally:
        server.should_exit = True
        await serving


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(demo(os.environ.get("AIODURABLEDICT_URL") or f"sqlite:///{Path(folder) / 'flags.db'}"))
