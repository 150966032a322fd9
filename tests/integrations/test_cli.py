"""The ``aiodurabledict`` command line, run as a subprocess (``python -m aiodurabledict``) on real stores."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiodurabledict import open_dict
from tests.integrations._helpers import ROOT, arun_cli, cli_env, run_cli, with_query
from tests.stores.redis import REDIS_URL

pytestmark = pytest.mark.timeout(120)


def test_set_get_delete_round_trip(store_url: str) -> None:
    """``set`` stores JSON, ``get`` prints it back as JSON, ``delete`` removes it (exit 0 each)."""
    assert run_cli("set", "flags", '{"beta": true, "ratio": 0.5, "name": "é"}', url=store_url).returncode == 0
    got = run_cli("get", "flags", url=store_url)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"beta": True, "ratio": 0.5, "name": "é"}
    assert run_cli("delete", "flags", url=store_url).returncode == 0
    missing = run_cli("get", "flags", url=store_url)
    assert missing.returncode == 3
    assert missing.stderr.strip() == "aiodurabledict: error: key 'flags' not found"


def test_str_values(store_url: str) -> None:
    """``set --str`` stores the text as a string; ``get --str`` prints it without JSON quotes."""
    assert run_cli("set", "greeting", "hello world", "--str", url=store_url).returncode == 0
    assert run_cli("get", "greeting", url=store_url).stdout == '"hello world"\n'
    assert run_cli("get", "greeting", "--str", url=store_url).stdout == "hello world\n"


def test_invalid_json_value_is_a_usage_error(store_url: str) -> None:
    """A VALUE that is not JSON exits 2 with one line suggesting ``--str``; nothing is written."""
    result = run_cli("set", "k", "not json", url=store_url)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--str" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli("get", "k", url=store_url).returncode == 3


def test_delete_missing_key_exits_3(store_url: str) -> None:
    """Deleting a key that is not there exits 3."""
    result = run_cli("delete", "nope", url=store_url)
    assert result.returncode == 3
    assert "not found: 'nope'" in result.stderr


def test_list_table_and_json(store_url: str) -> None:
    """``list`` prints aligned key/value rows sorted by key; ``list --json`` one JSON object."""
    run_cli("load", url=store_url, stdin='{"b": [1, 2], "a": "x", "long_key": null}')
    table = run_cli("list", url=store_url)
    assert table.returncode == 0
    assert table.stdout.splitlines() == ['a         "x"', "b         [1, 2]", "long_key  null"]
    as_json = run_cli("list", "--json", url=store_url)
    assert json.loads(as_json.stdout) == {"a": "x", "b": [1, 2], "long_key": None}


def test_empty_list_prints_nothing(store_url: str) -> None:
    """An empty dict lists as no lines (and ``{}`` with ``--json``)."""
    assert run_cli("list", url=store_url).stdout == ""
    assert run_cli("list", "--json", url=store_url).stdout == "{}\n"


def test_dump_and_load_restore_a_backup(store_url: str, redis_url: str, tmp_path: Path) -> None:
    """``dump > file`` then ``load < file`` into another store reproduces every entry."""
    entries = {"a": 1, "b/c": {"nested": [True, None]}, "ünï": "çødé"}
    assert run_cli("load", url=store_url, stdin=json.dumps(entries)).returncode == 0
    dumped = run_cli("dump", url=store_url)
    assert dumped.returncode == 0
    assert json.loads(dumped.stdout) == entries
    backup = tmp_path / "backup.json"
    backup.write_text(dumped.stdout, encoding="utf-8")
    loaded = run_cli("load", str(backup), url=redis_url)
    assert loaded.returncode == 0, loaded.stderr
    assert "wrote 3 key(s) in one batch" in loaded.stderr
    assert json.loads(run_cli("dump", url=redis_url).stdout) == entries


@pytest.mark.redis
async def test_load_is_one_atomic_batch(redis_url: str) -> None:
    """``load`` commits every entry at once: a watcher sees all of them at a single store version."""
    async with open_dict(redis_url) as d:
        changes = d.changes()
        code, _, err = await arun_cli(
            "load", url=redis_url, stdin=json.dumps({f"k{i}": i for i in range(50)})
        )
        assert code == 0, err
        seen = []
        async with asyncio.timeout(30):
            async for change in changes:
                seen.append(change)
                if len(seen) == 50:
                    break
        assert {c.key for c in seen} == {f"k{i}" for i in range(50)}
        assert len({c.version for c in seen}) == 1


def test_load_replace_removes_keys_the_input_lacks(store_url: str) -> None:
    """``load --replace`` leaves exactly the input's entries and says the removal was not atomic."""
    run_cli("load", url=store_url, stdin='{"keep": 1, "drop": 2}')
    result = run_cli("load", "--replace", url=store_url, stdin='{"keep": 10, "new": 3}')
    assert result.returncode == 0
    assert "removed 1 key(s)" in result.stderr
    assert "not atomic" in result.stderr
    assert json.loads(run_cli("dump", url=store_url).stdout) == {"keep": 10, "new": 3}


@pytest.mark.parametrize(
    ("stdin", "message"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('{"": 1}', "empty")],
)
def test_load_bad_input_is_a_usage_error(store_url: str, stdin: str, message: str) -> None:
    """``load`` of invalid JSON, a non-object, or an invalid key exits 2 and writes nothing."""
    run_cli("set", "before", "1", url=store_url)
    result = run_cli("load", url=store_url, stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr
    assert json.loads(run_cli("dump", url=store_url).stdout) == {"before": 1}


def test_load_missing_file_is_an_error(redis_url: str, tmp_path: Path) -> None:
    """``load FILE`` of a file that does not exist exits 1 naming it."""
    result = run_cli("load", str(tmp_path / "absent.json"), url=redis_url)
    assert result.returncode == 1
    assert "absent.json" in result.stderr


@pytest.mark.redis
def test_copy_moves_entries_byte_for_byte(store_url: str, redis_url: str) -> None:
    """``copy SRC DST`` copies every entry; ``--replace`` also removes what SRC lacks."""
    run_cli("load", url=store_url, stdin='{"a": 1, "b": [2]}')
    run_cli("set", "stale", "true", url=redis_url)
    plain = run_cli("copy", store_url, redis_url)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(run_cli("dump", url=redis_url).stdout) == {"a": 1, "b": [2], "stale": True}
    replaced = run_cli("copy", "--replace", store_url, redis_url)
    assert replaced.returncode == 0
    assert json.loads(run_cli("dump", url=redis_url).stdout) == {"a": 1, "b": [2]}


@pytest.mark.redis
async def test_copy_keeps_values_no_json_codec_can_read(redis_url: str) -> None:
    """``copy`` moves stored bytes untouched, so values written with another codec survive."""
    from aiodurabledict import PickleCodec

    dst = with_query(REDIS_URL, keyspace=redis_url.rsplit("keyspace=", 1)[1] + "-dst")
    try:
        async with open_dict(redis_url, codec=PickleCodec()) as src:
            await src.set("when", {1, 2, 3})
        code, _, err = await arun_cli("copy", redis_url, dst)
        assert code == 0, err
        async with open_dict(dst, codec=PickleCodec()) as copied:
            assert copied["when"] == {1, 2, 3}
    finally:
        async with open_dict(dst) as d:
            await d.clear()


def test_url_flag_before_or_after_the_command(redis_url: str) -> None:
    """``--url`` works both before and after the command, and wins over ``AIODURABLEDICT_URL``."""
    run_cli("--url", redis_url, "set", "k", "1", url="memory://")
    result = run_cli("get", "k", "--url", redis_url, url="memory://")
    assert result.stdout == "1\n"


def test_unreachable_store_exits_4_in_one_line(unused_port: int) -> None:
    """A store that cannot be reached exits 4 with one line and no traceback; ``--debug`` adds it."""
    url = f"redis://:hunter2@127.0.0.1:{unused_port}/0?keyspace=x"
    result = run_cli("--timeout", "2", "get", "k", url=url)
    assert result.returncode == 4
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("aiodurabledict: error: ")
    assert "hunter2" not in result.stderr
    debug = run_cli("--debug", "--timeout", "2", "get", "k", url=url)
    assert debug.returncode == 4
    assert "Traceback" in debug.stderr
    assert "hunter2" not in debug.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nosuch://x", "unsupported store URL"),
        ("redis://:hunter2@localhost/0?bogus=1", "unknown option 'bogus'"),
    ],
)
def test_bad_url_exits_2(url: str, message: str) -> None:
    """A bad URL exits 2 with one line, the password masked."""
    result = run_cli("list", url=url)
    assert result.returncode == 2
    assert message in result.stderr
    assert "hunter2" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_usage_errors_exit_2() -> None:
    """No command, an unknown command, a missing argument, or a bad ``--timeout`` exit 2."""
    for args in ([], ["frobnicate"], ["get"], ["--timeout", "0", "list"]):
        assert run_cli(*args, url="memory://").returncode == 2, args


def test_help_documents_urls_and_exit_codes() -> None:
    """``--help`` lists the URL forms and the exit codes."""
    result = run_cli("--help")
    assert result.returncode == 0
    assert "sqlite:///aiodurabledict.db" in result.stdout
    assert "3 key not found" in result.stdout
    assert "4 store unreachable" in result.stdout


def test_console_script_entry_point_is_main() -> None:
    """The console script ``aiodurabledict`` declared in pyproject runs ``aiodurabledict.cli:main``."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"aiodurabledict": "aiodurabledict.cli:main"}
    from aiodurabledict.cli import main

    assert main(["--url", "memory://", "list"]) == 0
    assert main(["--url", "memory://", "get"]) == 2  # returned, not raised


def test_default_store_is_an_sqlite_file_in_the_current_directory(tmp_path: Path) -> None:
    """With no ``--url`` and no ``AIODURABLEDICT_URL`` the CLI keeps the dict in ./aiodurabledict.db."""
    from tests.integrations.conftest import sqlite_available

    sqlite_available()
    assert run_cli("set", "k", '"v"', cwd=tmp_path).returncode == 0
    assert (tmp_path / "aiodurabledict.db").exists()
    assert run_cli("get", "k", cwd=tmp_path).stdout == '"v"\n'


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_watch_streams_json_lines_until_a_signal(store_url: str, sig: signal.Signals) -> None:
    """``watch`` prints one JSON line per change made by another process and exits 0 on SIGTERM/SIGINT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aiodurabledict",
        "watch",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(store_url),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            ready = await proc.stderr.readline()
            assert b"watching" in ready
            # One change at a time: a polling watcher reports the state it finds, so changes made
            # between two polls would arrive as one.
            lines = []
            for command in (("set", "a", "1"), ("set", "a", '"two"'), ("delete", "a")):
                assert (await arun_cli(*command, url=store_url))[0] == 0
                lines.append(json.loads(await proc.stdout.readline()))
            proc.send_signal(sig)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for line in lines:
        assert isinstance(line.pop("version"), int)
    assert lines == [
        {"key": "a", "op": "set", "new": 1},
        {"key": "a", "op": "set", "new": "two", "old": 1},
        {"key": "a", "op": "delete", "old": "two"},
    ]


async def test_values_that_are_not_json(redis_url: str) -> None:
    """A stored value JSON cannot decode: ``get`` exits 1 naming the key; ``list`` leaves it out with a
    warning; ``dump`` refuses (exit 1, nothing written) unless ``--skip-undecodable``."""
    from aiodurabledict import RawCodec

    async with open_dict(redis_url, codec=RawCodec(), watch=False) as raw:
        await raw.update({"bad": b"\x80not json", "good": b"1"})
    code, _, err = await arun_cli("get", "bad", url=redis_url)
    assert code == 1
    assert "cannot decode the stored value of key 'bad'" in err
    code, out, err = await arun_cli("list", "--json", url=redis_url)
    assert code == 0
    assert json.loads(out) == {"good": 1}
    assert "1 value(s) cannot be decoded: 'bad'; left out" in err
    code, out, err = await arun_cli("dump", url=redis_url)
    assert (code, out) == (1, "")
    assert "1 value(s) cannot be decoded: 'bad'; nothing written" in err
    code, out, err = await arun_cli("dump", "--skip-undecodable", url=redis_url)
    assert code == 0
    assert json.loads(out) == {"good": 1}


def test_a_missing_extra_exits_1_naming_it() -> None:
    """Without the store's client library the CLI exits 1 with the ``pip install`` line that fixes it."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from aiodurabledict.cli import main\n"
        "sys.exit(main(['--url', 'redis://127.0.0.1:6379/0', 'list']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60, check=False
    )
    assert result.returncode == 1
    assert "pip install 'aiodurabledict[redis]'" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.redis
async def test_the_urls_timeout_holds_unless_the_flag_is_given() -> None:
    """`?timeout=` in the URL bounds each store call; `--timeout` overrides it only when given. Seen
    from outside: against a frozen Redis (a private server, SIGSTOP) the CLI fails with exit 4 and
    names the bound it waited."""
    pytest.importorskip("redis")
    from tests.servers import RedisServer

    server = RedisServer()
    await server.astart()
    try:
        server.freeze()
        for argv, waited in (
            ([f"{server.url}?timeout=0.5", "list"], "0.5 s"),
            ([f"{server.url}?timeout=0.5", "--timeout", "0.3", "list"], "0.3 s"),
            ([server.url, "--timeout", "0.4", "list"], "0.4 s"),
        ):
            code, _, stderr = await arun_cli("--url", *argv)
            assert code == 4, stderr
            assert f"did not answer within {waited}" in stderr, stderr
    finally:
        server.thaw()
        server.close()


def test_deeply_nested_json_is_a_usage_error(store_url: str) -> None:
    """``load`` (and ``set``) of JSON nested too deeply to read exits 2 with one line, not 1 with a
    RecursionError; nothing is written."""
    deep = "[" * 100_000 + "]" * 100_000
    for result in (
        run_cli("load", url=store_url, stdin='{"k": ' + deep + "}"),
        run_cli("set", "k", "-", url=store_url, stdin=deep),
    ):
        assert result.returncode == 2, result.stderr
        assert "nested too deeply" in result.stderr
        assert result.stderr.count("\n") == 1
    assert run_cli("get", "k", url=store_url).returncode == 3


def test_list_escapes_control_characters(store_url: str) -> None:
    """A stored key or value holding terminal control characters (ESC, BEL, CSI) is printed escaped,
    never raw; ``list --json`` stays valid JSON with them as \\u escapes."""
    key, value = "k\x1b[2Jwiped\x07", "v\x9b31mred\x7f"
    assert run_cli("set", key, json.dumps(value), url=store_url).returncode == 0
    for args in (("list",), ("list", "--json"), ("dump",), ("get", key)):
        result = run_cli(*args, url=store_url)
        assert result.returncode == 0, result.stderr
        for control in ("\x1b", "\x07", "\x9b", "\x7f"):
            assert control not in result.stdout, (args, result.stdout)
    listed = json.loads(run_cli("list", "--json", url=store_url).stdout)
    assert listed == {key: value}


async def test_get_reads_one_key_without_loading_the_dict(redis_url: str) -> None:
    """On a store that reads single keys, ``get KEY`` asks for that key only: with 20,000 keys in the
    dict, Redis serves no HGETALL and no MULTI/EXEC load for it."""
    from redis.asyncio import Redis

    async with open_dict(redis_url, watch=False) as d:
        await d.update({f"k{i}": i for i in range(20_000)})
    admin: Any = Redis.from_url(redis_url.partition("?")[0])
    try:
        before = await admin.info("commandstats")
        code, out, err = await arun_cli("get", "k123", url=redis_url)
        after = await admin.info("commandstats")
    finally:
        await admin.aclose()
    assert (code, out) == (0, "123\n"), err

    def calls(stats: dict[str, Any], command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    for command in ("hgetall", "exec"):
        assert calls(after, command) == calls(before, command), command


def test_drop_needs_yes_and_removes_the_dict(store_url: str) -> None:
    """``drop`` refuses without --yes (exit 2); with it the dict is gone: a later ``list`` is empty."""
    assert run_cli("set", "k", "1", url=store_url).returncode == 0
    refused = run_cli("drop", url=store_url)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert run_cli("get", "k", url=store_url).returncode == 0
    assert run_cli("drop", "--yes", url=store_url).returncode == 0
    assert run_cli("get", "k", url=store_url).returncode == 3
    assert json.loads(run_cli("list", "--json", url=store_url).stdout) == {}
