"""The blocking dict: durabledict's API for code that is not async, on one shared loop thread."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

from aiodurabledict import MISSING, MemoryDict, NotOpenError, blocking


def _url() -> str:
    return f"memory://blocking-{uuid.uuid4().hex}"


def test_durabledicts_api() -> None:
    """d[k] = v, d[k], del d[k], in, len, iteration, keys/values/items, dict(d), get, setdefault,
    pop, update, clear, compare_and_set, sync and last_updated, as durabledict users write them."""
    with blocking.open_dict(_url()) as d:
        first = d.last_updated()
        assert first
        d["a"] = 1
        d.set("b", [2])
        assert d["a"] == 1
        assert d.get("b") == [2]
        assert d.get("zz", "dflt") == "dflt"
        assert "a" in d
        assert len(d) == 2
        assert sorted(d) == ["a", "b"]
        assert sorted(d.keys()) == ["a", "b"]
        assert sorted(d.items()) == [("a", 1), ("b", [2])]
        assert [2] in list(d.values())
        assert dict(d) == {"a": 1, "b": [2]}
        assert d == {"a": 1, "b": [2]}
        assert d.setdefault("a", 99) == 1
        assert d.setdefault("c", 3) == 3
        assert d.pop("c") == 3
        assert d.pop("c", None) is None
        with pytest.raises(KeyError):
            d.pop("c")
        del d["b"]
        with pytest.raises(KeyError):
            del d["b"]
        with pytest.raises(KeyError):
            d["b"]
        d.update({"x": 1}, y=2)
        assert d.compare_and_set("x", 1, 10) is True
        assert d.compare_and_set("x", 1, 11) is False
        assert d.compare_and_set("new", MISSING, 0) is True
        d.sync()
        assert d.sync() is False
        assert d.last_updated() > first
        d.clear()
        assert len(d) == 0


def test_reads_check_the_store_first_unless_a_watcher_keeps_them_live() -> None:
    """autosync (the default): without a push watcher a read sees another dict's write at once;
    autosync=False with watch=False is durabledict's manual mode: only sync() moves the cache."""
    url = _url()
    with (
        blocking.open_dict(url, watch=False) as fresh,
        blocking.open_dict(url, watch=False, autosync=False) as manual,
        blocking.open_dict(url) as writer,
    ):
        writer["k"] = 1
        assert fresh["k"] == 1
        assert "k" not in manual
        assert manual.sync() is True
        assert manual["k"] == 1
        writer["k"] = 2
        assert fresh.get("k") == 2
        assert manual["k"] == 1


def test_a_live_dict_reads_without_a_hop() -> None:
    """With a push watcher live, a read is a lookup in the caller's thread: the store counts nothing."""
    store_dict: MemoryDict[Any] = MemoryDict()
    with blocking.wrap(store_dict) as d:
        d["k"] = 1
        for _ in range(500):
            if d.live:
                break
            threading.Event().wait(0.01)
        assert d.live
        before = store_dict.store.round_trips
        for _ in range(1000):
            assert d["k"] == 1
            assert d.get("k") == 1
        assert store_dict.store.round_trips == before


def test_many_threads_read_and_write_at_once() -> None:
    """32 threads each write their own keys and read everyone's: no error, and the dicts end equal
    to the store."""
    url = _url()
    errors: list[BaseException] = []
    with blocking.open_dict(url) as d, blocking.open_dict(url, watch=False) as check:

        def work(n: int) -> None:
            try:
                for i in range(20):
                    d[f"t{n}-{i}"] = i
                    assert d[f"t{n}-{i}"] == i
                    _ = len(d), list(d.items())
                    if i % 5 == 4:
                        d.pop(f"t{n}-{i - 1}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        check.sync()
        assert len(check) == 32 * 16
        d.sync()
        assert dict(d) == dict(check)


def test_inside_an_event_loop_it_refuses_instead_of_deadlocking() -> None:
    """A blocking call from async code raises RuntimeError at once."""
    d = blocking.open_dict(_url())
    try:

        async def misuse() -> None:
            with pytest.raises(RuntimeError, match="async dict"):
                d["k"] = 1

        asyncio.run(misuse())
    finally:
        d.close()


def test_a_wrapped_dict_opened_before_a_fork_refuses_in_the_child() -> None:
    """A wrapped dict cannot be rebuilt in a forked child: it refuses there (NotOpenError); one from
    open_dict reopens; the parent's keeps working."""
    code = r"""
import os, sys
from aiodurabledict import MemoryDict, NotOpenError, blocking

wrapped = blocking.wrap(MemoryDict())
opened = blocking.open_dict("memory://x")
wrapped["k"] = opened["k"] = 1
pid = os.fork()
if pid == 0:
    try:
        wrapped["k"]
    except NotOpenError:
        pass
    else:
        os._exit(3)
    opened["j"] = 2
    os._exit(0 if opened["j"] == 2 else 4)
_, status = os.waitpid(pid, 0)
wrapped["k"] = 5
assert wrapped["k"] == 5 and opened["k"] == 1
print("child", os.waitstatus_to_exitcode(status))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout


def test_the_interpreter_exits_cleanly_with_dicts_left_open() -> None:
    """Dicts never closed are closed at exit and the loop thread stops: the process ends, quietly."""
    code = (
        "from aiodurabledict import blocking\nd = blocking.open_dict('memory://x')\nd['k'] = 1\nprint('done')"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


def test_a_closed_dict_refuses_writes() -> None:
    """After close(), writes and syncs raise NotOpenError."""
    d = blocking.open_dict(_url())
    d.close()
    with pytest.raises(NotOpenError):
        d["k"] = 1
    with pytest.raises(NotOpenError):
        d.sync()
