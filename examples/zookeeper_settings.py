"""Settings in ZooKeeper: one znode per key under the dict's path, kept fresh by ZooKeeper's watches.

Two dicts on one path stand for two processes (each has its own session). Keys may hold any
characters, `/` included. `d.version` is ZooKeeper's own transaction id, comparable across processes.

Run it against a ZooKeeper on loopback: `python examples/zookeeper_settings.py`
(the server from $AIODURABLEDICT_ZOOKEEPER, else 127.0.0.1:2181).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiozk

from aiodurabledict import MISSING, ZookeeperDict

SERVERS = os.environ.get("AIODURABLEDICT_ZOOKEEPER", "127.0.0.1:2181")
PATH = f"/aiodurabledict-examples/settings-{os.getpid()}"


async def remove_tree(session: aiozk.ZKClient, path: str) -> None:
    for child in await session.get_children(path):
        await remove_tree(session, f"{path}/{child}")
    await session.delete(path)


async def main() -> None:
    # The sessions are ours: the dicts use them and leave them open.
    sessions = [aiozk.ZKClient(SERVERS), aiozk.ZKClient(SERVERS)]
    async with asyncio.timeout(60):
        for session in sessions:
            await session.start()
        try:
            api: ZookeeperDict[Any] = ZookeeperDict(PATH, sessions[0])
            scheduler: ZookeeperDict[Any] = ZookeeperDict(PATH, sessions[1])
            async with api, scheduler:
                changes = scheduler.changes()
                await api.update(
                    {"jobs/nightly": {"cron": "0 3 * * *"}, "jobs/hourly": {"cron": "0 * * * *"}}
                )

                seen: set[str] = set()
                async for change in changes:
                    print(f"scheduler saw {change.key!r} -> {change.new!r} (zxid {change.version})")
                    seen.add(change.key)
                    if seen == {"jobs/nightly", "jobs/hourly"}:
                        break

                await api.delete("jobs/hourly")
                async for change in changes:  # the watch brings the deletion in
                    if change.key == "jobs/hourly" and change.new is MISSING:
                        print(f"scheduler saw 'jobs/hourly' deleted (zxid {change.version})")
                        break
                print("scheduler's jobs now:", sorted(scheduler))
                print("versions (zxids): api", api.version, "| scheduler", scheduler.version)
                await api.clear()
            await remove_tree(sessions[0], PATH)  # leave nothing behind
        finally:
            for session in sessions:
                await session.close()


if __name__ == "__main__":
    asyncio.run(main())
