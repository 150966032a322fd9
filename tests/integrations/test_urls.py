"""``open_dict(url)``: every scheme, typed query options, and clear errors for bad URLs."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiodurabledict import open_dict
from aiodurabledict._urls import redact
from aiodurabledict.errors import EncodeError
from tests.integrations._helpers import ROOT, unique, with_query
from tests.servers import unavailable
from tests.stores.redis import REDIS_URL


async def test_memory_urls_with_one_name_share_one_store() -> None:
    """Two ``memory://NAME`` dicts in one process see each other's writes; another name does not."""
    name = unique()
    async with (
        open_dict(f"memory://{name}") as a,
        open_dict(f"memory://?keyspace={name}&watch=false") as b,
        open_dict(f"memory://{name}x?watch=false") as other,
    ):
        await a.set("k", [1, 2])
        assert await b.get("k") == [1, 2]
        assert await other.get("k") is None


async def test_url_options_are_typed_and_applied() -> None:
    """``?watch=false&autosync=off`` reach the dict: no watcher, and ``get`` does not sync."""
    name = unique()
    async with (
        open_dict(f"memory://{name}?watch=false&autosync=off&timeout=2.5&heartbeat=0.5") as reader,
        open_dict(f"memory://{name}") as writer,
    ):
        assert reader.status.watching is False
        await writer.set("k", 1)
        assert await reader.get("k") is None  # autosync off: the cache was not refreshed
        assert await reader.sync() is True
        assert await reader.get("k") == 1


async def test_keyword_options_win_over_the_urls() -> None:
    """A keyword option overrides the same option in the URL."""
    async with open_dict(f"memory://{unique()}?watch=true", watch=False) as d:
        assert d.status.watching is False


async def test_raw_codec_from_the_url() -> None:
    """``?codec=raw`` stores bytes as they are and refuses anything else before writing."""
    async with open_dict(f"memory://{unique()}?codec=raw") as d:
        await d.set("k", b"\x00\xff")
        assert d["k"] == b"\x00\xff"
        with pytest.raises(EncodeError):
            await d.set("j", "text")
        assert "j" not in d


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://x?bogus=1", "unknown option 'bogus'"),
        ("memory://x?watch=maybe", "bad value 'maybe' for option 'watch'"),
        ("memory://x?heartbeat=-1", "option 'heartbeat'"),
        ("memory://x?timeout=nan", "option 'timeout'"),
        ("memory://x?timeout=1&timeout=2", "given twice"),
        ("memory://x?codec=pickle", "PickleCodec is opt-in"),
        ("memory://x?keyspace=y", "names its store twice"),
        ("memory://?keyspace=", "empty keyspace"),
        ("ftp://host/x", "unsupported store URL"),
        ("localhost:6379", "unsupported store URL"),
        ("", "no scheme"),
        ("redis://", "names no host"),
        ("redis://localhost/settings", "must be a database number"),
        ("redis://localhost:notaport/0", "malformed store URL"),
        ("redis://localhost/0?nonsense=1", "unknown option 'nonsense'"),
        ("redis+unix://", "names no socket path"),
        ("zookeeper:///app", "names no server"),
        ("zookeeper://host/app", "expected host:port"),
        ("zookeeper://u@host:2181/app", "credentials are user:password@"),
        ("zookeeper://host:2181,host/app", "expected host:port"),
        ("zookeeper://host:2181/app?keyspace=b", "names its znode twice"),
        ("zookeeper://host:2181/app?chroot=/x", "unknown option 'chroot'"),
        ("sqlite://", "names no file"),
        ("sqlite://:memory:", "use memory://"),
        ("sqlite://host/file.db", "has a host"),
        ("postgres://", "names no host or database"),
    ],
)
def test_bad_urls_raise_value_error(url: str, message: str) -> None:
    """A malformed URL, an unknown scheme or option, or a bad value is a ``ValueError`` saying which."""
    with pytest.raises(ValueError, match=re.escape(message)):
        open_dict(url)


def test_a_non_string_url_is_a_type_error() -> None:
    """Passing something other than a string is a ``TypeError``."""
    with pytest.raises(TypeError):
        open_dict(b"memory://x")  # type: ignore[arg-type]


def test_errors_never_show_the_password() -> None:
    """Error messages carry the URL with its password masked."""
    with pytest.raises(ValueError, match="unknown option") as info:
        open_dict("redis://user:s3cret@localhost:6379/0?bogus=1")
    assert "s3cret" not in str(info.value)
    assert "user:***@localhost:6379" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:1/0", "redis://:***@host:1/0"),
        ("postgres://me:pw@db/app?sslmode=require", "postgres://me:***@db/app?sslmode=require"),
        ("redis://host:1/0", "redis://host:1/0"),
        ("redis://host:1/0?password=pw&db=1", "redis://host:1/0?password=***&db=1"),
        ("sqlite:////abs/file.db", "sqlite:////abs/file.db"),
        ("http://[::1", "<unparsable URL>"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    """``redact`` masks exactly the password."""
    assert redact(url) == shown


def test_a_missing_extra_names_the_extra_to_install() -> None:
    """Without redis-py, ``redis://`` fails with an ``ImportError`` naming the extra; memory still works."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from aiodurabledict._urls import open_dict\n"
        "open_dict('memory://x')\n"
        "try:\n"
        "    open_dict('redis://localhost:6379/0')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    ).stdout
    assert "pip install 'aiodurabledict[redis]'" in out


@pytest.mark.redis
async def test_redis_url_keyspaces(redis_url: str) -> None:
    """Dicts on one Redis URL and keyspace share their content; another keyspace is separate."""
    other = with_query(REDIS_URL, keyspace=redis_url.rsplit("keyspace=", 1)[1] + "-other")
    async with open_dict(redis_url) as a, open_dict(redis_url, watch=False) as b, open_dict(other) as c:
        await a.set("k", {"v": 1})
        assert await b.get("k") == {"v": 1}
        assert await c.get("k") is None


@pytest.mark.redis
async def test_redis_url_dict_owns_and_closes_its_client(redis_url: str) -> None:
    """The client ``open_dict`` made is closed by ``aclose()``: its connection leaves the server."""
    from redis.asyncio import Redis

    name = unique("client")
    admin: Any = Redis.from_url(REDIS_URL)
    try:

        async def connected() -> bool:
            clients = await admin.client_list()
            return any(c.get("name") == name for c in clients)

        async with open_dict(with_query(redis_url, client_name=name, socket_timeout="5")) as d:
            await d.set("k", 1)
            assert await connected()
        for _ in range(100):
            if not await connected():
                break
            await asyncio.sleep(0.02)
        assert not await connected()
    finally:
        await admin.aclose()


@pytest.mark.redis
async def test_redis_over_a_unix_socket(tmp_path: Path) -> None:
    """``redis+unix:///path/to/socket?db=N&keyspace=K`` reaches a Redis listening on that socket."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    socket_path = tmp_path / "redis.sock"
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(500):
            try:
                _, writer = await asyncio.open_unix_connection(str(socket_path))
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            await writer.wait_closed()
            break
        url = f"redis+unix://{socket_path}?db=2&keyspace=over-unix"
        async with open_dict(url) as a, open_dict(url, watch=False) as b:
            await a.set("k", "v")
            assert await b.get("k") == "v"
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize(
    ("path", "other_form"),
    [
        ("nodir/x.db", "sqlite:////nodir/x.db"),
        ("/nonexistent-aiodurabledict/x.db", "sqlite:///nonexistent-aiodurabledict/x.db"),
    ],
)
def test_an_sqlite_file_in_a_missing_folder_names_the_other_form(
    tmp_path: Path, path: str, other_form: str
) -> None:
    """sqlite:///relative and sqlite:////absolute: when the folder is missing, the open fails with
    one line naming the folder and the URL's other form (what a Tortoise user may have meant), no
    driver traceback, and no file is made anywhere."""
    pytest.importorskip("tortoise")
    from tests.integrations._helpers import run_cli

    result = run_cli("list", url=f"sqlite:///{path}", cwd=tmp_path)
    assert result.returncode == 4
    assert other_form in result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


async def test_open_dict_on_a_missing_sqlite_folder_is_a_backend_error(tmp_path: Path) -> None:
    """The same from the API: ``BackendError`` naming the folder, before any connection is made."""
    pytest.importorskip("tortoise")
    from aiodurabledict import BackendError

    d = open_dict(f"sqlite:///{tmp_path}/missing/x.db")
    with pytest.raises(BackendError, match=r"folder .*missing.* does not exist") as info:
        await d.open()
    assert f"sqlite:///{str(tmp_path).lstrip('/')}/missing/x.db" in str(info.value)
