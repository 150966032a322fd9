"""The cache's rules, without an event loop or a store: what each kind of delta does to it.

The cache follows one history: a range applies only when it starts exactly at the cache's version
and token; anything else is reported (``Outcome``) for the sync layer to act on, and changes nothing.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from aiodurabledict import MISSING, Change, Delta, JSONCodec, NotOpenError
from aiodurabledict._cache import Cache, ForkedEntries, Outcome


def loaded(content: dict[str, bytes] | None = None, *, version: int = 10, token: str | None = "t10") -> Cache:
    """A cache loaded at ``version`` (commit ``token``) with ``content``."""
    cache = Cache(JSONCodec())
    assert cache.apply(Delta(version, content or {}, full=True, token=token)) is Outcome.APPLIED
    return cache


def commit(version: int, changes: dict[str, bytes | None], *, token: str, prev_token: str) -> Delta:
    """The range one commit made: from ``version - 1`` to ``version``."""
    return Delta(version, changes, prev=version - 1, token=token, prev_token=prev_token)


def test_a_range_that_follows_the_cache_applies() -> None:
    """A commit starting at the cache's version and token moves the cache to its version and token."""
    cache = loaded({"a": b"1"})
    assert cache.apply(commit(11, {"a": b"2", "b": b"3"}, token="t11", prev_token="t10")) is Outcome.APPLIED
    assert cache.data == {"a": 2, "b": 3}
    assert (cache.version, cache.token) == (11, "t11")


def test_a_range_from_ahead_changes_nothing() -> None:
    """A notice whose predecessor the cache has not seen (lost, or forged far ahead) is a gap: no key
    takes its value, so a key can never be pinned at a version the store will not reach."""
    cache = loaded({"k": b"1"})
    forged = Delta(10**15, {"k": b"666"}, prev=10**15 - 1, token="x", prev_token="y")
    assert cache.apply(forged) is Outcome.BEHIND
    assert cache.data == {"k": 1}
    assert cache.version == 10
    # The cache's own next step still applies.
    assert cache.apply(commit(11, {"k": b"2"}, token="t11", prev_token="t10")) is Outcome.APPLIED
    assert cache.data == {"k": 2}


def test_a_range_from_another_history_diverges() -> None:
    """Same version, other token: the store's commit at our version is not ours. Nothing applies."""
    cache = loaded({"k": b"1"})
    other = commit(11, {"k": b"2"}, token="u11", prev_token="u10")
    assert cache.apply(other) is Outcome.DIVERGED
    assert cache.data == {"k": 1}
    nothing_changed = Delta(10, {}, prev=10, token="u10", prev_token="u10")
    assert cache.apply(nothing_changed) is Outcome.DIVERGED


def test_nothing_changed_at_the_same_token_is_current() -> None:
    """The store's answer "nothing since your version", with our token, leaves the cache as it is."""
    cache = loaded({"k": b"1"})
    assert cache.apply(Delta(10, {}, prev=10, token="t10", prev_token="t10")) is Outcome.CURRENT
    assert (cache.version, cache.token, cache.data) == (10, "t10", {"k": 1})


def test_an_answer_the_cache_has_passed_is_stale_or_recognised() -> None:
    """A late answer never overwrites a newer value: its own commit is recognised by its token, an
    unknown older one is stale, one with another token at a version we passed means another history."""
    cache = loaded({"k": b"1"})
    cache.apply(commit(11, {"k": b"2"}, token="t11", prev_token="t10"))
    cache.apply(commit(12, {"k": b"3"}, token="t12", prev_token="t11"))
    assert cache.apply(commit(11, {"k": b"2"}, token="t11", prev_token="t10")) is Outcome.CURRENT
    assert cache.apply(commit(11, {"k": b"9"}, token="z11", prev_token="t10")) is Outcome.DIVERGED
    assert cache.apply(Delta(9, {"k": b"0"}, prev=8, token="t9", prev_token="t8")) is Outcome.STALE
    assert cache.apply(Delta(11, {"k": b"2"}, full=True, token="t11")) is Outcome.STALE
    assert cache.data == {"k": 3}
    assert cache.version == 12


def test_a_reading_ahead_of_the_cache_changes_nothing() -> None:
    """What a store read at a later version (a pop that found the key absent) cannot remove a key
    from a cache behind it: the two may be separated by a write of that key."""
    cache = loaded({"k": b"1"})
    assert cache.apply(Delta(12, {"k": None}, token="t12")) is Outcome.BEHIND
    assert cache.data == {"k": 1}


def test_a_reading_at_the_cache_version_applies() -> None:
    """A reading at exactly the cache's version and token is the truth as of the cache: it applies."""
    cache = loaded({"k": b"1"})
    assert cache.apply(Delta(10, {"j": b"5"}, token="t10")) is Outcome.CURRENT
    assert cache.data == {"k": 1, "j": 5}
    assert cache.apply(Delta(10, {"j": b"6"}, token="other")) is Outcome.DIVERGED


def test_a_full_delta_older_than_asked_is_a_rewind() -> None:
    """Asked what came after our version, the store answered with everything at an older one: it
    went back. The cache takes it whole (the lost writes disappear) and counts a rewind."""
    cache = loaded({"k": b"1", "lost": b"2"})
    rewound = Delta(7, {"k": b"1"}, full=True, token="t7")
    assert cache.apply(rewound, asked=10) is Outcome.REWOUND
    assert cache.data == {"k": 1}
    assert (cache.version, cache.token, cache.rewinds) == (7, "t7", 1)


def test_a_full_delta_at_our_version_with_another_token_is_a_rewind() -> None:
    """The store reused our version for other writes: the cache takes its content."""
    cache = loaded({"k": b"1"})
    assert cache.apply(Delta(10, {"k": b"9"}, full=True, token="u10"), asked=10) is Outcome.REWOUND
    assert cache.data == {"k": 9}
    assert cache.token == "u10"


def test_a_late_full_delta_is_stale() -> None:
    """A load sent at version 10 and answered after the cache moved on (our own commit) is ignored,
    whether or not the cache still remembers version 10's token."""
    cache = loaded({"k": b"1"})
    cache.apply(commit(11, {"k": b"2"}, token="t11", prev_token="t10"))
    assert cache.apply(Delta(10, {"k": b"1"}, full=True, token="t10"), asked=10) is Outcome.STALE
    assert cache.apply(Delta(10, {"k": b"1"}, full=True, token=None), asked=10) is Outcome.STALE
    for _ in range(300):  # push version 10 out of the remembered ones
        v = cache.version
        cache.apply(commit(v + 1, {"k": b"3"}, token=f"t{v + 1}", prev_token=f"t{v}"))
    assert cache.apply(Delta(10, {"k": b"1"}, full=True, token="t10"), asked=10) is Outcome.STALE
    assert cache.data == {"k": 3}


def test_a_forced_write_makes_the_cache_dirty_until_a_reload() -> None:
    """A write that could not be placed shows at once (read your writes), and the next full delta
    replaces everything, even one at the cache's own version."""
    cache = loaded({"k": b"1"})
    cache.force(Delta(15, {"k": b"2"}, prev=14, token="t15", prev_token="t14"))
    assert cache.dirty
    assert cache.data == {"k": 2}
    assert cache.apply(Delta(10, {"k": b"1", "j": b"0"}, full=True, token="t10")) is Outcome.APPLIED
    assert not cache.dirty
    assert cache.data == {"k": 1, "j": 0}


def test_stores_without_tokens_are_followed_by_version() -> None:
    """A store that keeps no identities (tokens None) is followed by its versions alone."""
    cache = loaded({"k": b"1"}, token=None)
    assert cache.apply(Delta(11, {"k": b"2"}, prev=10)) is Outcome.APPLIED
    assert cache.apply(Delta(11, {}, prev=11, token="t11", prev_token="t11")) is Outcome.CURRENT
    assert cache.token == "t11"


def test_incomplete_notices_ask_for_a_check() -> None:
    """A notice without values is a gap when ahead of the cache, stale otherwise."""
    cache = loaded()
    assert cache.apply(Delta(11, complete=False)) is Outcome.BEHIND
    assert cache.apply(Delta(10, complete=False)) is Outcome.STALE


def test_listeners_see_each_change_with_missing_for_absence() -> None:
    """Listeners receive every key that took a new value or went away, in order; no-ops are silent."""
    cache = loaded({"a": b"1"})
    seen: list[Change[Any]] = []
    cache.listeners.append(seen.append)
    cache.apply(commit(11, {"a": b"1", "b": b"2"}, token="t11", prev_token="t10"))
    cache.apply(commit(12, {"a": None}, token="t12", prev_token="t11"))
    assert seen == [Change("b", MISSING, 2, 11), Change("a", 1, MISSING, 12)]


def test_an_undecodable_value_marks_its_key_only() -> None:
    """Bytes the codec cannot read make that key raise DecodeError; the rest loads."""
    cache = loaded({"good": b"1", "bad": b"\xff{"})
    assert cache.data == {"good": 1}
    assert "bad" in cache.data.bad
    with pytest.raises(ValueError, match="bad"):
        cache.data["bad"]


def test_forked_entries_refuse_every_read_through_any_view() -> None:
    """Swapping the entries' class makes the dict, its views and proxies already handed out refuse."""
    cache = loaded({"k": b"1"})
    proxy = MappingProxyType(cache.data)
    cache.data.__class__ = ForkedEntries
    for read in (lambda: cache.data["k"], lambda: "k" in proxy, lambda: len(proxy), lambda: list(proxy)):
        with pytest.raises(NotOpenError, match="parent process"):
            read()
    with pytest.raises(NotOpenError):
        proxy["k"]
