"""Every example in ``examples/`` runs to completion and exits 0, against the servers the tests use."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integrations._helpers import ROOT, cli_env
from tests.servers import require_postgres, require_redis, require_zookeeper

EXAMPLES = ROOT / "examples"

# What each example needs before it can run; examples not listed need nothing but Python.
NEEDS: dict[str, tuple[pytest.MarkDecorator, Callable[[], str]]] = {
    "redis_settings.py": (pytest.mark.redis, require_redis),
    "migrate_from_durabledict.py": (pytest.mark.redis, require_redis),
    "zookeeper_settings.py": (pytest.mark.zookeeper, require_zookeeper),
}


def _examples() -> list[object]:
    params: list[object] = []
    for path in sorted(EXAMPLES.glob("*.py")):
        if path.name.startswith("_"):
            continue
        need = NEEDS.get(path.name)
        params.append(pytest.param(path.name, id=path.stem, marks=[need[0]] if need else []))
    return params


def test_every_example_is_covered() -> None:
    """The examples this suite runs include the ones the README names."""
    names = {p.values[0] for p in _examples()}  # type: ignore[attr-defined]
    assert {
        "quickstart.py",
        "fastapi_flags.py",
        "redis_settings.py",
        "zookeeper_settings.py",
        "migrate_from_durabledict.py",
        "wsgi_flags.py",
        "worker.py",
        "model_dict.py",
        "custom_backend.py",
    } <= names


@pytest.mark.parametrize("name", _examples())
def test_example_runs_and_exits_0(name: str, tmp_path: Path) -> None:
    """``python examples/NAME`` exits 0 within the time limit, from any working directory."""
    need = NEEDS.get(name)
    if need is not None:
        need[1]()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=str(tmp_path),
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.strip(), "an example shows what it did"


@pytest.mark.postgres
def test_the_model_dict_example_runs_on_postgresql(tmp_path: Path) -> None:
    """``examples/model_dict.py`` against PostgreSQL (Tortoise's asyncpg URL), twice: the second run
    finds the tables and rows of the first and ends with the same settings."""
    url = require_postgres()
    env = {**cli_env(), "AIODURABLEDICT_DB": url}
    outputs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "model_dict.py")],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(tmp_path),
            timeout=100,
            check=False,
        )
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert "settings: {'feature_x': True, 'limit': 100, 'theme': 'dark'}" in outputs[1]
