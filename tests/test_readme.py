"""The README stays true to the code it quotes."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quotes_the_custom_backend_example_whole() -> None:
    """The own-store example printed in the README is the file that the conformance suite runs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = (ROOT / "examples" / "custom_backend.py").read_text(encoding="utf-8").rstrip()
    assert f"```python\n{example}\n```" in readme


def test_readme_commands_name_files_that_exist() -> None:
    """The set-up, example and test commands the README gives point at real files."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in ("scripts/setup.sh", "scripts/test.sh", "examples/quickstart.py", "scripts/servers.sh"):
        assert path in readme
        assert (ROOT / path).is_file(), path
