"""A missing extra is named, with the line that installs it, by every way in to the store."""

from __future__ import annotations

import pytest

from tests.programs import run_python


def _without(modules: list[str], statement: str) -> str:
    """Run ``statement`` in a fresh interpreter where ``modules`` cannot be imported; its stderr."""
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    code = f"import sys; {blocked}\n{statement}"
    result = run_python(code)
    assert result.returncode != 0
    return result.stderr


@pytest.mark.parametrize(
    ("modules", "statement", "extra"),
    [
        (["tortoise"], "from aiodurabledict import ModelDict", "tortoise"),
        (["redis"], "from aiodurabledict import RedisDict", "redis"),
        (["aiozk"], "from aiodurabledict import ZookeeperDict", "zookeeper"),
        (["fastapi"], "import aiodurabledict.fastapi", "fastapi"),
        (["opentelemetry"], "import aiodurabledict.otel", "otel"),
        (["redis"], "from aiodurabledict import open_dict; open_dict('redis://localhost/0')", "redis"),
        (["tortoise"], "from aiodurabledict import open_dict; open_dict('sqlite:///x.db')", "tortoise"),
    ],
)
def test_a_missing_extra_says_what_to_install(modules: list[str], statement: str, extra: str) -> None:
    """The error names the extra and gives the pip line, never a bare ModuleNotFoundError."""
    stderr = _without(modules, statement)
    assert f"pip install 'aiodurabledict[{extra}]'" in stderr, stderr
