"""SQLite and fork(): a process forked while aiosqlite's thread is inside SQLite inherits SQLite's
mutexes locked, and its first SQLite call waits forever. The dicts' SQLite statements hold a fork
back until they end.

Each test forks in a Python process of its own (never in pytest's), whose children always end with
``os._exit``.
"""

from __future__ import annotations

from pathlib import Path

from tests.programs import run_python

ROUNDS = 15
CHILDREN = 4


def test_children_forked_right_after_open_read_the_sqlite_file(tmp_path: Path) -> None:
    """gunicorn --preload's pattern, over and over: a blocking dict opened on an SQLite file, then
    children forked at once (while the watcher's first check runs); each child's first read
    reopens the dict and succeeds. Without the gate about one child in twelve hung there."""
    code = r"""
import os, sys
from aiodurabledict import blocking

url, rounds, children = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = blocking.open_dict(url)
seed["k"] = "v"
seed.close()
failed = 0
for _ in range(rounds):
    d = blocking.open_dict(url, timeout=5)
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(0 if d["k"] == "v" else 3)
            except BaseException as exc:
                print(type(exc).__name__, exc, flush=True)
                os._exit(4)
        pids.append(pid)
    for pid in pids:
        failed += os.waitpid(pid, 0)[1] != 0
    d.close()
print("failed", failed, "of", rounds * children)
"""
    result = run_python(code, f"sqlite:///{tmp_path / 'f.db'}", str(ROUNDS), str(CHILDREN))
    assert result.returncode == 0, result.stderr
    assert f"failed 0 of {ROUNDS * CHILDREN}" in result.stdout, result.stdout


def test_a_fork_waits_for_a_write_in_flight(tmp_path: Path) -> None:
    """A write waiting for another connection's lock is in flight when the process forks: the fork
    waits for it to commit, so the child (reading the file with plain sqlite3 at once) sees it."""
    code = r"""
import os, sqlite3, sys, threading, time
from aiodurabledict import blocking

path = sys.argv[1]
d = blocking.open_dict(f"sqlite:///{path}", watch=False)
holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
holder.execute("BEGIN IMMEDIATE")
writer = threading.Thread(target=d.__setitem__, args=("k", "v"))
writer.start()
time.sleep(0.5)  # the write now waits for the lock, inside its session
assert writer.is_alive()
threading.Timer(1.0, holder.execute, args=("COMMIT",)).start()
pid = os.fork()
if pid == 0:
    child = sqlite3.connect(path)
    rows = child.execute("SELECT COUNT(*) FROM aiodurabledict_entry WHERE key = 'k'").fetchall()
    os._exit(0 if rows == [(1,)] else 3)
status = os.waitpid(pid, 0)[1]
writer.join()
d.close()
print("child", os.waitstatus_to_exitcode(status))
"""
    result = run_python(code, str(tmp_path / "f.db"))
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout, (result.stdout, result.stderr)


def test_a_fork_waits_a_bounded_time_then_warns(tmp_path: Path) -> None:
    """A write stuck behind another connection's lock for longer than the gate waits (2 s) does not
    hold the fork forever: it goes on, and the log says the child may hang."""
    code = r"""
import logging, os, sqlite3, sys, threading, time
from aiodurabledict import BackendError, blocking

logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
path = sys.argv[1]
d = blocking.open_dict(f"sqlite:///{path}", watch=False, timeout=8)
holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
holder.execute("BEGIN IMMEDIATE")

def write():
    try:
        d["k"] = "v"
    except BackendError:
        pass

writer = threading.Thread(target=write)
writer.start()
time.sleep(0.5)
assert writer.is_alive()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("forked while the write waits:", writer.is_alive(), flush=True)
holder.execute("ROLLBACK")
writer.join()
d.close()
"""
    result = run_python(code, str(tmp_path / "f.db"))
    assert result.returncode == 0, result.stderr
    assert "forked while the write waits: True" in result.stdout, result.stdout
    assert "WARNING the process forks while a dict's SQLite statement still runs after 2 s" in result.stdout


def test_a_fork_from_inside_the_loop_does_not_wait_for_its_own_sessions(tmp_path: Path) -> None:
    """A coroutine forks while a write of its own loop is in flight: that write cannot end while the
    loop is inside fork(), so the gate does not wait for it (no 2 s stall, no warning), and the
    write completes afterwards in the parent."""
    code = r"""
import asyncio, logging, os, sqlite3, sys
from aiodurabledict import open_dict

logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
path = sys.argv[1]

async def main():
    async with open_dict(f"sqlite:///{path}", watch=False) as d:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(d.set("k", "v"))
        await asyncio.sleep(0.5)
        assert not write.done()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        holder.execute("ROLLBACK")
        await write
        print("written:", d["k"], flush=True)

asyncio.run(main())
"""
    result = run_python(code, str(tmp_path / "f.db"))
    assert result.returncode == 0, result.stderr
    assert "written: v" in result.stdout, result.stdout
    assert "WARNING" not in result.stdout, result.stdout
