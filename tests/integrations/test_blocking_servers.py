"""The blocking dict on real stores: many threads at once, and gunicorn's forking sync workers.

Each test runs on Redis (push), an SQLite file (polled) and PostgreSQL (LISTEN/NOTIFY), on a fresh
namespace removed afterwards. The gunicorn tests serve ``examples/wsgi_flags.py`` on a free loopback
port and stop the server they started (by its pid) whatever happens.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aiodurabledict import blocking, open_dict
from examples.wsgi_flags import every_worker_sees, gunicorn
from tests.integrations._helpers import run_cli, with_query
from tests.servers import require_postgres
from tests.stores.redis import REDIS_URL, redis_keyspace

THREADS = 32


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh dict's URL on a store that separate processes share; its namespace removed after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "postgres":
        found = with_query(require_postgres(), keyspace=f"blocking-{uuid.uuid4().hex}")
        yield found
        async with open_dict(found, watch=False) as d:
            await d.drop()
    else:
        async with redis_keyspace() as (keyspace, _clients):
            yield with_query(REDIS_URL, keyspace=keyspace)


def test_32_threads_read_and_write_at_once(url: str) -> None:
    """32 threads share two blocking dicts (one followed by its watcher, one checking the store at
    each read), each thread writing its own keys and reading them back, reading the others', popping
    some, racing on one setdefault and counting with compare-and-set: no error, one setdefault winner,
    every increment counted once, and both dicts end equal to what a fresh dict loads from the store."""
    errors: list[BaseException] = []
    winners: list[Any] = []
    start = threading.Barrier(THREADS)
    with blocking.open_dict(url) as watched, blocking.open_dict(url, watch=False) as checking:
        watched["counter"] = 0

        def work(n: int) -> None:
            d = watched if n % 2 else checking
            try:
                start.wait(30)
                winners.append(d.setdefault("once", n))
                for i in range(6):
                    d[f"t{n}/{i}"] = [n, i]
                    assert d[f"t{n}/{i}"] == [n, i]
                    _ = d.get(f"t{(n + 1) % THREADS}/{i}"), len(d), list(d.items())
                    if i % 3 == 2:
                        assert d.pop(f"t{n}/{i - 1}") == [n, i - 1]
                for _ in range(2):
                    while not d.compare_and_set("counter", current := d["counter"], current + 1):
                        pass
            except BaseException as exc:  # noqa: BLE001 - reported below, with the thread's number
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,), name=f"worker-{n}") for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "a thread is still running after 90 s"
        assert errors == []
        assert len(set(winners)) == 1
        expected: dict[str, Any] = {f"t{n}/{i}": [n, i] for n in range(THREADS) for i in (0, 2, 3, 5)}
        expected |= {"counter": 2 * THREADS, "once": winners[0]}
        with blocking.open_dict(url, watch=False) as fresh:
            assert dict(fresh.items()) == expected
        for d in (watched, checking):
            d.sync()
            assert dict(d.items()) == expected


@pytest.mark.slow
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "open-in-worker"])
def test_every_gunicorn_worker_sees_a_change_made_by_the_cli(url: str, preload: bool) -> None:
    """gunicorn with 3 sync workers serving a blocking dict: a flag set by the CLI in another
    process is served by every worker (asked until each worker pid has answered it, 30 s at most).
    Under --preload the dict opened in the master before the fork reopens in each worker; without it
    each worker opens its own."""
    assert run_cli("--url", url, "set", "flag", "1").returncode == 0
    with gunicorn(url, workers=3, preload=preload) as server:
        workers = server.worker_pids()
        before = every_worker_sees(server, "flag", 1)
        opened_in = {answer["opened_in"] for answer in before.values()}
        assert opened_in == ({server.process.pid} if preload else workers)
        changed = run_cli("--url", url, "set", "flag", "2")
        assert changed.returncode == 0, changed.stderr
        after = every_worker_sees(server, "flag", 2)
        assert set(after) == workers == server.worker_pids()
