"""The blocking dict: durabledict's API for code that is not async, on one shared loop thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from typing import Any

import pytest

from aiodurabledict import (
    MISSING,
    DecodeError,
    MemoryDict,
    MemoryStore,
    NotOpenError,
    RawCodec,
    StaleError,
    blocking,
)
from tests.programs import run_python


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
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout


def test_the_interpreter_exits_cleanly_with_dicts_left_open() -> None:
    """Dicts never closed are closed at exit and the loop thread stops: the process ends, quietly."""
    code = (
        "from aiodurabledict import blocking\nd = blocking.open_dict('memory://x')\nd['k'] = 1\nprint('done')"
    )
    result = run_python(code, flags=("-W", "error"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


def test_a_closed_dict_refuses_writes() -> None:
    """After close(), writes and syncs raise NotOpenError."""
    d = blocking.open_dict(_url())
    d.close()
    with pytest.raises(NotOpenError):
        d["k"] = 1
    with pytest.raises(NotOpenError):
        d.sync()


def test_reads_serve_the_last_values_while_the_store_is_down() -> None:
    """A read that checks the store (no push watcher) serves the last known values when the store
    fails, as the async dict's autosync reads do, until max_staleness passes: then StaleError.
    Writes raise BackendError meanwhile."""
    store = MemoryStore()
    with blocking.wrap(MemoryDict(store, watch=False, max_staleness=0.3)) as d:
        d["k"] = 1
        store.failing = True
        assert d["k"] == 1
        assert d.get("k") == 1
        assert "k" in d
        assert dict(d.items()) == {"k": 1}
        threading.Event().wait(0.4)
        with pytest.raises(StaleError):
            d["k"]
        store.failing = False
        # Once the store answers again (after the syncer's backoff), reads check it again.
        for _ in range(500):
            with contextlib.suppress(StaleError):
                assert d["k"] == 1
                break
            threading.Event().wait(0.02)
        else:
            pytest.fail("reads still raise StaleError 10 s after the store came back")


def test_reads_serve_the_last_values_after_close() -> None:
    """After close(), reads serve the dict's last values (with or without a watcher, with or without
    autosync); writes and syncs refuse."""
    url = _url()
    for opts in ({}, {"watch": False}, {"watch": False, "autosync": False}):
        d = blocking.open_dict(url, **opts)  # type: ignore[arg-type]
        d["k"] = 1
        d.close()
        assert d["k"] == 1
        assert d.get("k") == 1
        assert len(d) == 1
        assert dict(d) == {"k": 1}
        with pytest.raises(NotOpenError):
            d["k"] = 2


def test_get_of_an_undecodable_value_raises_decode_error() -> None:
    """get() of a key whose stored value cannot be decoded raises DecodeError naming it, as d[k]
    does, instead of returning the default."""
    url = _url()
    with blocking.open_dict(url, codec=RawCodec()) as raw:
        raw["bad"] = b"\xff not json"
    with blocking.open_dict(url) as d:
        with pytest.raises(DecodeError) as info:
            d.get("bad")
        assert info.value.key == "bad"
        with pytest.raises(DecodeError):
            d.get("bad", "default")
        assert d.get("absent", "default") == "default"


def test_threads_of_a_forked_child_share_one_reopening() -> None:
    """16 threads of a forked child using a dict opened before the fork all at once: every read
    succeeds and the dict is reopened exactly once; a dict closed before the fork stays closed."""
    code = r"""
import gc, os, threading
from aiodurabledict import AsyncDurableDict, blocking

d = blocking.open_dict("memory://fork-threads")
d["k"] = 1
closed = blocking.open_dict("memory://fork-closed")
closed["c"] = 2
closed.close()
pid = os.fork()
if pid == 0:
    errors = []
    barrier = threading.Barrier(16)

    def read():
        barrier.wait()
        try:
            assert d["k"] == 1
            assert d.get("k") == 1
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=read) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    opened = [o for o in gc.get_objects() if isinstance(o, AsyncDurableDict) and o.status.open]
    print(errors, len(opened), closed["c"], flush=True)
    os._exit(0 if not errors and len(opened) == 1 and closed["c"] == 2 else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout, result.stdout


def test_run_calls_the_async_dict_on_the_shared_loop() -> None:
    """blocking.run() runs a coroutine function of the async dict on the shared loop (here
    wait_live, which the blocking dict does not mirror) and returns its result."""
    with blocking.open_dict(_url()) as d:
        blocking.run(d.async_dict.wait_live, 10)
        assert d.live
        d["k"] = [1]
        assert blocking.run(d.async_dict.snapshot) == {"k": [1]}


def test_drop_empties_the_store_and_closes() -> None:
    """drop() removes the dict from its store and closes it; a new dict on it starts empty."""
    url = _url()
    d = blocking.open_dict(url)
    d.update(a=1, b=2)
    d.drop()
    assert not d.status.open
    with pytest.raises(NotOpenError):
        d["a"] = 1
    with blocking.open_dict(url) as again:
        assert len(again) == 0
