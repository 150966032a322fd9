"""Python programs run in an interpreter of their own: for what must not happen in pytest's process
(forks, interpreter exit, modules made unimportable)."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["run_python"]


def run_python(
    code: str, *args: str, flags: tuple[str, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python [flags] -c code args...``, its output captured as text; never raises on its exit status."""
    return subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
