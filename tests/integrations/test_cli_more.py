"""Command-line conveniences, run in-process on ``memory://`` stores (one process, one store).

The store-backed behaviour of every command is in test_cli.py; these pin the options themselves.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import aiodurabledict
from aiodurabledict.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def url() -> str:
    return f"memory://cli-{uuid.uuid4().hex}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package's version."""
    assert run(capsys, "--version")[:2] == (0, f"aiodurabledict {aiodurabledict.__version__}\n")


def test_keyspace_option_names_the_dict(capsys: pytest.CaptureFixture[str]) -> None:
    """--keyspace picks the dict within the store, as ?keyspace= would (and replaces the URL's)."""
    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    assert run(capsys, "--url", "memory://", "--keyspace", a, "set", "k", "1")[0] == 0
    assert run(capsys, "--url", "memory://", "--keyspace", b, "get", "k")[0] == 3
    assert run(capsys, "--url", f"memory://?keyspace={b}", "--keyspace", a, "get", "k")[:2] == (0, "1\n")


def test_set_reads_the_value_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """set KEY - reads VALUE from stdin (JSON, or text with --str)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"a": [1, 2]}\n'))
    assert run(capsys, "--url", url, "set", "k", "-")[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("multi\nline\n"))
    assert run(capsys, "--url", url, "set", "t", "-", "--str")[0] == 0
    assert json.loads(run(capsys, "--url", url, "dump")[1]) == {"k": {"a": [1, 2]}, "t": "multi\nline"}


def test_delete_several_keys(capsys: pytest.CaptureFixture[str], url: str) -> None:
    """delete takes several keys: present ones are removed, missing ones are named, exit 3."""
    run(capsys, "--url", url, "set", "a", "1")
    run(capsys, "--url", url, "set", "b", "2")
    code, _, err = run(capsys, "--url", url, "delete", "a", "nope", "b")
    assert code == 3
    assert "'nope'" in err
    assert json.loads(run(capsys, "--url", url, "dump")[1]) == {}


def test_bytes_travel_as_base64(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """On a ?codec=raw store, values are bytes: set/load take {"$bytes": base64}, get/list/dump print it."""
    raw = f"{url}?codec=raw"
    assert run(capsys, "--url", raw, "set", "k", '{"$bytes": "AP8="}')[0] == 0
    assert json.loads(run(capsys, "--url", raw, "get", "k")[1]) == {"$bytes": "AP8="}
    assert json.loads(run(capsys, "--url", raw, "list", "--json")[1]) == {"k": {"$bytes": "AP8="}}
    dumped = run(capsys, "--url", raw, "dump")[1]
    other = f"memory://cli-{uuid.uuid4().hex}?codec=raw"
    monkeypatch.setattr(sys, "stdin", io.StringIO(dumped))
    assert run(capsys, "--url", other, "load", "-")[0] == 0
    assert json.loads(run(capsys, "--url", other, "dump")[1]) == {"k": {"$bytes": "AP8="}}
    assert run(capsys, "--url", raw, "set", "bad", '{"$bytes": "not base64!"}')[0] == 2


def test_dump_refuses_to_leave_values_out(capsys: pytest.CaptureFixture[str], url: str) -> None:
    """A value that cannot be decoded fails dump (exit 1, nothing written) unless --skip-undecodable."""
    run(capsys, "--url", f"{url}?codec=raw", "set", "bad", '{"$bytes": "/w=="}')
    run(capsys, "--url", url, "set", "good", "1")
    code, out, err = run(capsys, "--url", url, "dump")
    assert (code, out) == (1, "")
    assert "'bad'" in err
    code, out, err = run(capsys, "--url", url, "dump", "--skip-undecodable")
    assert code == 0
    assert json.loads(out) == {"good": 1}
    assert "left out" in err


def test_shell_completion(tmp_path: Path) -> None:
    """With argcomplete installed, the command completes its subcommands."""
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "COMP_LINE": "aiodurabledict de",
        "COMP_POINT": str(len("aiodurabledict de")),
        "_ARGCOMPLETE_IFS": "\n",
    }
    subprocess.run(
        [sys.executable, "-m", "aiodurabledict"], env=env, capture_output=True, timeout=60, check=False
    )
    assert out.read_text().split() == ["delete"]
