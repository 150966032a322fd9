"""Quickstart: two processes share one dict kept in an SQLite file; no server needed.

This process opens the dict and starts a second process on the same file. The child reads what the
parent wrote and answers; the parent's watcher brings the answer in without being asked.

Run it: `python examples/quickstart.py`
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from aiodurabledict import open_dict


async def parent() -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'quickstart.db'}"
        # poll_interval: how often the watcher checks the file for other processes' writes.
        async with open_dict(url, poll_interval=0.05) as settings:
            await settings.set("greeting", "hello from the parent")
            print(f"[parent {os.getpid()}] wrote greeting; starting a child process")

            changes = settings.changes()
            child = await asyncio.create_subprocess_exec(sys.executable, __file__, url)
            async with asyncio.timeout(60):
                async for change in changes:
                    if change.key == "reply":
                        print(f"[parent {os.getpid()}] the watcher brought in reply={change.new!r}")
                        break
                assert await child.wait() == 0

            # The synchronous view reads the local cache: no I/O.
            print(f"[parent {os.getpid()}] settings now: {dict(settings.view)}")


async def child(url: str) -> None:
    # A short-lived process needs no watcher: opening loads everything.
    async with open_dict(url, watch=False) as settings:
        print(f"[child  {os.getpid()}] read greeting={settings['greeting']!r}")
        await settings.set("reply", f"hello back from process {os.getpid()}")


if __name__ == "__main__":
    asyncio.run(child(sys.argv[1]) if len(sys.argv) > 1 else parent())
