"""The whole contract as a pytest suite, to run against any store, including a user's own.

Subclass ``DictConformance`` in a test module and provide a ``factory`` fixture: an async callable
``factory(**opts)`` that returns a NEW, unopened dict on the same store and namespace every time it is
called (as another process would), fresh for each test. Needs pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from .._backend import DroppableBackend, KeyReader
from .._codecs import PickleCodec, RawCodec
from .._dict import AsyncDurableDict
from .._types import MISSING, Change
from ..errors import DecodeError, EncodeError, InvalidKeyError, NotOpenError

__all__ = ["DictConformance", "Factory", "eventually", "opened"]

Factory = Callable[..., Awaitable[AsyncDurableDict[Any]]]


@asynccontextmanager
async def opened(factory: Factory, count: int = 1, **opts: Any) -> AsyncIterator[list[AsyncDurableDict[Any]]]:
    """Open ``count`` dicts on the factory's store (like as many processes) and close them after."""
    async with AsyncExitStack() as stack:
        dicts = [await stack.enter_async_context(await factory(**opts)) for _ in range(count)]
        yield dicts


async def eventually(check: Callable[[], bool], *, within: float = 15.0, message: str = "") -> None:
    """Wait until ``check()`` holds, polling; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            pytest.fail(message or f"condition not met within {within} s")
        await asyncio.sleep(0.01)


async def store_content(factory: Factory) -> dict[str, Any]:
    """What the store holds now, read by a fresh dict."""
    async with await factory(watch=False) as fresh:
        return await fresh.snapshot()


class DictConformance:
    """The contract of ``AsyncDurableDict``, store-independent."""

    # -- lifecycle --

    async def test_open_and_close_are_idempotent(self, factory: Factory) -> None:
        """Opening twice and closing twice are harmless; `async with` returns the dict."""
        d = await factory()
        async with d as entered:
            assert entered is d
            assert await d.open() is d
            await d.set("k", 1)
        await d.aclose()
        await d.close()

    async def test_awaitable_methods_before_open_raise_not_open(self, factory: Factory) -> None:
        """Every awaitable method raises NotOpenError before open() and after aclose(), never hangs."""
        d = await factory()
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: d.get("k"),
            lambda: d.set("k", 1),
            lambda: d.delete("k"),
            lambda: d.pop("k", None),
            lambda: d.setdefault("k", 1),
            lambda: d.update({"k": 1}),
            lambda: d.clear(),
            lambda: d.sync(),
            lambda: d.snapshot(),
        ]
        for call in calls:
            with pytest.raises(NotOpenError):
                await asyncio.wait_for(call(), 5)
        async with d:
            pass
        for call in calls:
            with pytest.raises(NotOpenError):
                await asyncio.wait_for(call(), 5)

    async def test_close_leaves_no_task_behind(self, factory: Factory) -> None:
        """After aclose() no task the dict started is still pending."""
        before = asyncio.all_tasks()
        async with await factory() as d:
            await d.set("k", 1)
            await d.sync()
        await asyncio.sleep(0)
        left = {t for t in asyncio.all_tasks() - before if not t.done()}
        assert left == set()

    # -- reads and writes --

    async def test_read_your_writes_as_the_codec_round_trips(self, factory: Factory) -> None:
        """After set() returns, d[k] is the value as the codec reads it back: a tuple becomes a list."""
        async with await factory() as d:
            await d.set("t", (1, "two", None))
            assert d["t"] == [1, "two", None]
            assert await d.get("t") == [1, "two", None]
            value: dict[str, list[object]] = {"nested": [1.5, True]}
            await d.set("n", value)
            value["nested"].append("mutated after set")
            assert d["n"] == {"nested": [1.5, True]}

    async def test_get_default_and_missing_keys(self, factory: Factory) -> None:
        """get() returns the default for a missing key; d[k] raises KeyError."""
        async with await factory() as d:
            assert await d.get("absent") is None
            assert await d.get("absent", 7) == 7
            with pytest.raises(KeyError):
                d["absent"]
            assert "absent" not in d

    async def test_delete_and_pop(self, factory: Factory) -> None:
        """delete() removes or raises KeyError; pop() returns the value or a default, falsy ones too."""
        async with await factory() as d:
            await d.update(a=1, b=2)
            await d.delete("a")
            assert "a" not in d
            with pytest.raises(KeyError):
                await d.delete("a")
            assert await d.pop("b") == 2
            with pytest.raises(KeyError):
                await d.pop("b")
            assert await d.pop("b", 0) == 0
            assert await d.pop("b", None) is None
            assert await d.pop("b", False) is False
            assert len(d) == 0

    async def test_setdefault(self, factory: Factory) -> None:
        """setdefault() writes only when absent and returns what is stored."""
        async with await factory() as d:
            assert await d.setdefault("k", [1]) == [1]
            assert await d.setdefault("k", [2]) == [1]
            assert d["k"] == [1]
            assert await d.setdefault("none") is None
            assert "none" in d

    async def test_update_forms_and_clear(self, factory: Factory) -> None:
        """update() takes a mapping, pairs and keywords; clear() empties the dict."""
        async with await factory() as d:
            await d.update({"a": 1}, b=2)
            await d.update([("c", 3), ("a", 10)])
            await d.update()
            assert dict(d.view) == {"a": 10, "b": 2, "c": 3}
            await d.clear()
            assert len(d) == 0
            assert await store_content(factory) == {}
            await d.clear()

    async def test_update_is_all_or_nothing_on_bad_input(self, factory: Factory) -> None:
        """A batch with one unencodable value or bad key writes nothing at all."""
        async with await factory() as d:
            await d.set("keep", 1)
            with pytest.raises(EncodeError):
                await d.update({"x": 1, "bad": {1, 2}})
            with pytest.raises(InvalidKeyError):
                await d.update({"x": 1, "": 2})
            with pytest.raises(TypeError):
                await d.update({"x": 1, 5: 2})  # type: ignore[arg-type]
            assert dict(d.view) == {"keep": 1}
        assert await store_content(factory) == {"keep": 1}

    # -- keys and values --

    async def test_keys_with_any_characters(self, factory: Factory) -> None:
        """Keys with '/', dots, unicode, spaces and control characters round-trip on every store."""
        keys = [
            "a/b",
            "/lead",
            "trail/",
            ".",
            "..",
            "zookeeper",
            "ünï cødé",
            "键",
            "🙂",
            "a b\tc",
            "%2F",
            "x" * 200,
        ]
        async with await factory() as d:
            await d.update({k: i for i, k in enumerate(keys)})
        content = await store_content(factory)
        assert content == {k: i for i, k in enumerate(keys)}

    async def test_invalid_keys(self, factory: Factory) -> None:
        """Non-str keys raise TypeError; empty, over-long and unencodable ones InvalidKeyError."""
        async with await factory() as d:
            with pytest.raises(TypeError):
                await d.set(1, 1)  # type: ignore[arg-type]
            with pytest.raises(InvalidKeyError):
                await d.set("", 1)
            with pytest.raises(InvalidKeyError):
                await d.set("\ud800", 1)
            if d.backend.max_key_bytes is not None:
                with pytest.raises(InvalidKeyError):
                    await d.set("k" * (d.backend.max_key_bytes + 1), 1)
            assert isinstance(InvalidKeyError("x"), ValueError)
        assert await store_content(factory) == {}

    async def test_unencodable_value_writes_nothing(self, factory: Factory) -> None:
        """A value the codec refuses raises EncodeError before anything is written."""
        async with await factory() as d:
            await d.set("k", "old")
            for bad in ({1, 2}, object(), math.nan, b"bytes"):
                with pytest.raises(EncodeError):
                    await d.set("k", bad)
            assert d["k"] == "old"
        assert await store_content(factory) == {"k": "old"}

    async def test_undecodable_value_fails_only_that_key(self, factory: Factory) -> None:
        """A stored value the codec cannot decode raises DecodeError for that key; the rest loads."""
        async with await factory(codec=RawCodec()) as raw:
            await raw.update({"bad": b"\xff not json", "good": b'{"ok":true}'})
        async with await factory() as d:
            assert d["good"] == {"ok": True}
            with pytest.raises(DecodeError) as info:
                d["bad"]
            assert info.value.key == "bad"
            with pytest.raises(DecodeError):
                await d.get("bad")
            assert d.undecodable == frozenset({"bad"})
            await d.set("bad", "fixed")
            assert d["bad"] == "fixed"

    async def test_other_codecs(self, factory: Factory) -> None:
        """Pickle (opt-in) and raw bytes codecs round-trip values JSON cannot hold."""
        async with await factory(codec=PickleCodec()) as d:
            await d.set("set", {1, 2})
            await d.set("tuple", (1, 2))
            assert d["set"] == {1, 2}
            assert d["tuple"] == (1, 2)
        async with await factory(codec=PickleCodec(), watch=False) as d2:
            assert d2["tuple"] == (1, 2)

    # -- the synchronous view --

    async def test_view_is_live_and_read_only(self, factory: Factory) -> None:
        """d.view is a live read-only Mapping; len, iter, in and == read the cache."""
        async with await factory() as d:
            view = d.view
            await d.update(a=1, b=2)
            assert view["a"] == 1
            assert sorted(view) == ["a", "b"]
            assert len(d) == 2
            assert sorted(d) == ["a", "b"]
            assert "a" in d
            assert d == {"a": 1, "b": 2}
            assert d != {"a": 1}
            with pytest.raises(TypeError):
                view["a"] = 5  # type: ignore[index]
            with pytest.raises(TypeError):
                d["a"] = 5  # type: ignore[index]

    async def test_version_moves_with_the_first_write(self, factory: Factory) -> None:
        """A dict's own first write to a fresh namespace moves its version to the store's version."""
        async with await factory(watch=False) as d:
            await d.set("k", 1)
            first = d.version
            assert first > 0
        async with await factory(watch=False) as e:
            assert e.version == first

    async def test_version_only_grows(self, factory: Factory) -> None:
        """Each write moves the version forward; it never goes back."""
        async with await factory() as d:
            seen: list[int] = [d.version]
            for i in range(5):
                await d.set("k", i)
                await d.sync()
                seen.append(d.version)
            assert seen == sorted(seen)
            assert seen[-1] > seen[0]

    # -- many processes --

    async def test_sync_sees_another_dicts_write(self, factory: Factory) -> None:
        """Without a watcher, sync() brings another dict's write and reports that something changed."""
        async with opened(factory, 2, watch=False) as (a, b):
            assert await b.sync() is False
            await a.set("k", 1)
            assert await b.sync() is True
            assert b["k"] == 1
            assert await b.sync() is False
            await a.delete("k")
            assert await b.get("k") is None

    async def test_sync_is_read_after_commit_with_a_live_watcher(self, factory: Factory) -> None:
        """With watchers live, sync() shows a write another dict has just completed, with no wait for
        its notice; sync(strict=False) may skip the check only while the dict is live."""
        async with opened(factory, 2) as (a, b):
            await eventually(lambda: a.status.connected and b.status.connected)
            for i in range(20):
                await a.set("k", i)
                await b.sync()
                assert b["k"] == i
                await b.set("j", i)
                await a.sync()
                assert a["j"] == i
                await a.sync(strict=False)
                if not a.live:
                    assert a["j"] == i

    async def test_autosync_get_reads_fresh_without_watcher(self, factory: Factory) -> None:
        """With autosync and no watcher, get() returns what another dict has just written."""
        async with opened(factory, 2, watch=False) as (a, b):
            for i in range(3):
                await a.set("k", i)
                assert await b.get("k") == i
            b_manual = b
            await a.set("k", "last")
            assert b_manual["k"] == 2

    async def test_watchers_converge(self, factory: Factory) -> None:
        """Dicts with watchers reach the store's state after writes stop, versions equal."""
        async with opened(factory, 3, heartbeat=0.5) as dicts:
            for i, d in enumerate(dicts):
                await d.set(f"k{i}", i)
                await d.set("shared", i)
            await dicts[0].delete("k0")
            expected = await store_content(factory)
            await eventually(lambda: all(d == expected for d in dicts))
            await eventually(lambda: len({d.version for d in dicts}) == 1)

    async def test_racing_writers_converge(self, factory: Factory) -> None:
        """8 writers over 4 dicts racing on few keys: every cache ends equal to the store."""
        async with opened(factory, 4, heartbeat=0.5) as dicts:

            async def writer(n: int) -> None:
                d = dicts[n % 4]
                for i in range(25):
                    key = f"k{(n + i) % 5}"
                    if i % 7 == 6:
                        await d.pop(key, None)
                    else:
                        await d.set(key, [n, i])

            await asyncio.gather(*(writer(n) for n in range(8)))
            expected = await store_content(factory)
            assert expected
            await eventually(lambda: all(d == expected for d in dicts))

    async def test_concurrent_setdefault_has_one_winner(self, factory: Factory) -> None:
        """Of 8 concurrent setdefault() callers on 4 dicts, exactly one value wins and all return it."""
        async with opened(factory, 4, watch=False) as dicts:
            results = await asyncio.gather(*(dicts[n % 4].setdefault("once", n) for n in range(8)))
            assert len(set(results)) == 1
            assert results[0] in range(8)
            assert await store_content(factory) == {"once": results[0]}

    async def test_compare_and_set(self, factory: Factory) -> None:
        """compare_and_set() writes only over the expected value (MISSING: absent; as new: remove),
        and the cache shows the store's value when it returns, swapped or not."""
        async with opened(factory, 2, watch=False) as (a, b):
            assert await a.compare_and_set("k", MISSING, 1) is True
            assert a["k"] == 1
            assert await b.compare_and_set("k", MISSING, 2) is False
            assert b["k"] == 1
            assert await b.compare_and_set("k", 5, 2) is False
            assert await b.compare_and_set("k", 1, {"x": [1]}) is True
            assert await a.compare_and_set("k", 1, 3) is False
            assert a["k"] == {"x": [1]}
            assert await a.compare_and_set("k", {"x": [1]}, MISSING) is True
            assert "k" not in a
            assert await a.compare_and_set("k", 1, MISSING) is False
            assert await a.compare_and_set("k", MISSING, MISSING) is True
            with pytest.raises(EncodeError):
                await a.compare_and_set("k", MISSING, {1, 2})
        assert await store_content(factory) == {}

    async def test_concurrent_compare_and_set_has_one_winner(self, factory: Factory) -> None:
        """Dicts racing to swap the same value: exactly one wins; compare-and-set loops from every
        dict count every increment exactly once."""
        async with opened(factory, 4, watch=False) as dicts:
            await dicts[0].set("n", 0)
            results = await asyncio.gather(*(d.compare_and_set("n", 0, i + 1) for i, d in enumerate(dicts)))
            assert sum(results) == 1
            start = results.index(True) + 1
            assert await store_content(factory) == {"n": start}

            async def bump(d: AsyncDurableDict[Any]) -> None:
                for _ in range(5):
                    while True:
                        current = await d.get("n", 0)
                        if await d.compare_and_set("n", current, current + 1):
                            break

            await asyncio.gather(*(bump(d) for d in dicts))
        assert await store_content(factory) == {"n": start + 20}

    async def test_read_one_key(self, factory: Factory) -> None:
        """A store that reads one key (``KeyReader``) answers a reading at its version: bytes, or
        ``None`` for an absent key."""
        async with await factory(watch=False) as d:
            backend = d.backend
            if not isinstance(backend, KeyReader):
                pytest.skip(f"{type(backend).__name__} does not read single keys")
            await d.set("k", [1, "x"])
            found = await backend.read("k")
            assert found.prev is None
            assert found.version == d.version
            assert d.codec.decode(found.changes["k"] or b"") == [1, "x"]
            assert (await backend.read("absent")).changes == {"absent": None}

    async def test_drop_removes_the_dict(self, factory: Factory) -> None:
        """drop() (where the store can) empties the store of the dict and closes it; a dict opened
        afterwards starts empty and writes as usual."""
        d = await factory(watch=False)
        if not isinstance(d.backend, DroppableBackend):
            pytest.skip(f"{type(d.backend).__name__} cannot drop a dict")
        async with d:
            await d.update(a=1, b=2)
            await d.pop("a")
            await d.drop()
            assert not d.status.open
        assert await store_content(factory) == {}
        async with await factory(watch=False) as again:
            await again.set("c", 3)
            assert again == {"c": 3}
        assert await store_content(factory) == {"c": 3}

    async def test_changes_stream_local_and_remote(self, factory: Factory) -> None:
        """changes() yields Change(key, old, new, version) for local and remote writes, MISSING for absence.

        A dict catching up after a gap sees only the result, so each write is awaited on the other side.
        """
        async with opened(factory, 2, heartbeat=0.5) as (a, b):
            local = a.changes()
            remote = b.changes()
            for value in (1, 2, MISSING):
                if value is MISSING:
                    await a.delete("k")
                else:
                    await a.set("k", value)
                # Wait for each write to arrive, so that no catching-up can merge two of them.
                await eventually(lambda v=value: b.view.get("k", MISSING) == v)  # type: ignore[misc]
            got_local = [await asyncio.wait_for(anext(local), 10) for _ in range(3)]
            got_remote = [await asyncio.wait_for(anext(remote), 10) for _ in range(3)]
            for got in (got_local, got_remote):
                assert [(c.key, c.old, c.new) for c in got] == [
                    ("k", MISSING, 1),
                    ("k", 1, 2),
                    ("k", 2, MISSING),
                ]
                assert all(isinstance(c, Change) for c in got)
                assert got[0].version < got[1].version < got[2].version

    async def test_changes_stream_ends_on_close(self, factory: Factory) -> None:
        """A changes() iterator ends when its dict closes."""
        d = await factory()
        async with d:
            stream = d.changes()
        assert [c async for c in stream] == []

    async def test_snapshot_is_a_copy(self, factory: Factory) -> None:
        """snapshot() returns a plain dict that later writes do not change."""
        async with await factory() as d:
            await d.update(a=1, b=[2])
            snap = await d.snapshot()
            await d.set("a", 5)
            assert snap == {"a": 1, "b": [2]}
            assert type(snap) is dict

    async def test_status_reports_a_live_watcher(self, factory: Factory) -> None:
        """With a watcher, status becomes connected; without one it reports not watching."""
        async with await factory() as d:
            await eventually(lambda: d.status.connected)
            assert d.status.watching
            assert d.status.stale_since is None
        async with await factory(watch=False) as d:
            assert not d.status.watching

    async def test_large_dict_round_trip(self, factory: Factory) -> None:
        """A few thousand keys written in one batch load back whole in another dict."""
        items = {f"key/{i}": {"n": i, "s": "x" * (i % 50)} for i in range(2000)}
        async with await factory() as d:
            await d.update(items)
        assert await store_content(factory) == items
