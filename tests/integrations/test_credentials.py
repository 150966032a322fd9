"""No message shows a credential: passwords with unencoded ``/ ? # @``, options spelled any way.

Each URL shape below carries the same secret; no piece of it may reach an error message, ``redact()``,
or the CLI's stderr, whether the URL parses or not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import quote

import pytest

from aiodurabledict import open_dict
from aiodurabledict._urls import redact

SECRET = "Zq7/Wx#Yv?Ut@Sr"
PIECES = [SECRET[i : i + 3] for i in range(len(SECRET) - 2) if not set(SECRET[i : i + 3]) & set("/#?@")]

SHAPES = [
    f"redis://:{SECRET}@127.0.0.1:1/0",
    f"redis://user:{SECRET}@127.0.0.1:1/0",
    f"redis://user:{SECRET}@127.0.0.1:1/0?bogus=1",
    f"rediss://user:{SECRET}@127.0.0.1:1/0",
    f"redis://user:{quote(SECRET, safe='')}@127.0.0.1:1/0?bogus=1",
    f"redis://127.0.0.1:1/0?password={quote(SECRET, safe='')}&bogus=1",
    f"redis://127.0.0.1:1/0?PASSWORD={quote(SECRET, safe='')}",
    f"redis://127.0.0.1:1/0?Password={quote(SECRET, safe='')}&db=x",
    f"rediss://127.0.0.1:1/0?ssl_password={quote(SECRET, safe='')}&bogus=1",
    f"postgres://me:{SECRET}@127.0.0.1:1/db",
    f"postgres://me:{quote(SECRET, safe='')}@127.0.0.1:1/db?bogus=",
    f"mysql://root:{SECRET}@127.0.0.1:1/db",
    f"zookeeper://u:{SECRET}@127.0.0.1:1/app",
    f"zookeeper://u:{SECRET}@127.0.0.1:1,127.0.0.1:2/app",
    f"sqlite:///x.db?password={quote(SECRET, safe='')}",
    f"memory://x?token={quote(SECRET, safe='')}",
    f"redis://user:{SECRET}@127.0.0.1:notaport/0",
    f"ftp://user:{SECRET}@host/x",
    f"user:{SECRET}@host:1",
]


def _shows_no_secret(text: str) -> None:
    shown = [p for p in PIECES if p in text or quote(p, safe="") in text]
    assert not shown, f"{shown} in {text!r}"


@pytest.mark.parametrize("url", SHAPES)
def test_redact_masks_the_whole_credential(url: str) -> None:
    """redact() leaves no piece of the password, in any spelling of any credential option."""
    _shows_no_secret(redact(url))


@pytest.mark.parametrize("url", SHAPES)
def test_errors_of_open_dict_show_no_credential(url: str) -> None:
    """Whatever open_dict() refuses, its message shows no piece of the password."""
    try:
        d = open_dict(url)
    except (ValueError, ImportError, TypeError) as exc:
        _shows_no_secret(str(exc))
    else:
        _shows_no_secret(repr(d))


@pytest.mark.parametrize("url", SHAPES[::3])
def test_the_cli_shows_no_credential_on_stderr(url: str) -> None:
    """The CLI's one-line errors (including those of client libraries) show no piece of the password."""
    result = subprocess.run(
        [sys.executable, "-m", "aiodurabledict", "--url", url, "--timeout", "1", "get", "k"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AIODURABLEDICT_URL": ""},
        check=False,
    )
    assert result.returncode != 0
    _shows_no_secret(result.stderr + result.stdout)


def test_an_unencoded_password_gets_a_hint_not_an_echo() -> None:
    """A password with / in it is refused with the fix (percent-encode), not parsed as a path."""
    with pytest.raises(ValueError, match="percent-encoded") as info:
        open_dict(f"redis://u:{SECRET}@127.0.0.1:6379/0")
    _shows_no_secret(str(info.value))
