"""Settings in a Celery-style prefork worker pool, read through the blocking dict.

The parent opens the settings once and then forks its pool (as Celery's prefork pool does): each
worker process reopens the dict at its first task, by itself. Tasks are plain functions that read
settings with durabledict's API. A task starts with `settings.sync()`: one version check, after which
it sees every change committed before it began, whatever the store (a push watcher alone brings a
change within its propagation delay). So when the parent changes a setting, the next task of every
worker computes with the new value.

Run it: `python examples/worker.py` (settings in a temporary SQLite file, or in $AIODURABLEDICT_URL).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Any

from aiodurabledict import blocking
from aiodurabledict.blocking import BlockingDict

WORKERS = 3

# Set in the parent before the pool forks, and so inherited by every worker.
settings: BlockingDict[Any]
# One round of tasks: each waits for the others, so that the round runs on every worker at once.
round_start: Any


def price(cents: int) -> tuple[int, int]:
    """A task: ``cents`` less the current discount (in percent); returns the worker's pid with it."""
    round_start.wait(30)
    settings.sync()
    discount: int = settings.get("discount_percent", 0)
    return os.getpid(), cents * (100 - discount) // 100


def run_round(pool: Any) -> dict[int, int]:
    """One task on each worker; the prices they computed, by worker pid."""
    results: list[tuple[int, int]] = pool.map(price, [1000] * WORKERS, chunksize=1)
    by_worker = dict(results)
    assert len(by_worker) == WORKERS, f"a round ran on {len(by_worker)} workers, not {WORKERS}"
    return by_worker


def main() -> None:
    global settings, round_start
    fork = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as folder:
        url = os.environ.get("AIODURABLEDICT_URL") or f"sqlite:///{Path(folder) / 'settings.db'}"
        settings = blocking.open_dict(url)
        round_start = fork.Barrier(WORKERS)
        try:
            settings["discount_percent"] = 10
            pool = fork.Pool(WORKERS)
            try:
                first = run_round(pool)
                print(f"[parent {os.getpid()}] discount 10%: workers price 1000 at {first}")
                assert set(first.values()) == {900}

                settings["discount_percent"] = 25
                second = run_round(pool)
                print(f"[parent {os.getpid()}] discount 25%: workers price 1000 at {second}")
                assert set(second.values()) == {750}
                assert second.keys() == first.keys()
            finally:
                pool.close()
                pool.join()
            del settings["discount_percent"]
        finally:
            settings.close()
    print("every worker's next task saw the new discount")


if __name__ == "__main__":
    main()
