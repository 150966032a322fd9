"""The README stays true to the code it quotes, the files it links and the figures it reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
REPOSITORY = "https://github.com/aiodurabledict/aiodurabledict"


# The README's prose, without its code blocks (code may hold anything that looks like a link).
PROSE = re.sub(r"```.*?```", "", README, flags=re.DOTALL)


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


@pytest.mark.parametrize("example", ["custom_backend.py", "model_dict.py"])
def test_readme_quotes_the_examples_whole(example: str) -> None:
    """The own-store example and the ModelDict set-up printed in the README are the files that CI
    runs."""
    code = (ROOT / "examples" / example).read_text(encoding="utf-8").rstrip()
    assert f"```python\n{code}\n```" in README


def test_readme_commands_name_files_that_exist() -> None:
    """The set-up, example and test commands the README gives point at real files."""
    for path in ("scripts/setup.sh", "scripts/test.sh", "examples/quickstart.py", "scripts/servers.sh"):
        assert path in README
        assert (ROOT / path).is_file(), path


def test_the_top_snippet_runs_as_a_file(tmp_path: Path) -> None:
    """The first code block, saved as a file and run, exits 0 and prints what its comments say."""
    pytest.importorskip("tortoise")
    snippet = re.search(r"```python\n(.*?)```", README, re.DOTALL)
    assert snippet is not None
    (tmp_path / "snippet.py").write_text(snippet.group(1), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\nTrue\n"


def test_links_to_the_repository_name_files_that_exist() -> None:
    """Links work on the package index page too (absolute), and each names a file of this tree."""
    links = re.findall(rf"\]\({re.escape(REPOSITORY)}/(?:blob|raw)/main/([^)#\s]+)\)", PROSE)
    assert links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert missing == []


def test_no_link_is_relative() -> None:
    """A relative link breaks on the package index page: every link is absolute or an anchor."""
    relative = [t for t in re.findall(r"\]\(([^)\s]+)\)", PROSE) if not t.startswith(("https://", "#"))]
    assert relative == []


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_anchor_names_a_heading() -> None:
    """The table of contents and the cross references lead somewhere."""
    slugs = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", PROSE, re.MULTILINE)}
    anchors = set(re.findall(r"\]\(#([^)]+)\)", PROSE))
    assert anchors
    assert anchors - slugs == set()


def _figures(text: str) -> set[str]:
    """Durations as the benchmark table prints them: '52.31 ns', '1.22 ms'."""
    return set(re.findall(r"\b\d[\d,]*(?:\.\d+)? (?:ns|µs|ms|s)\b", text))


def test_the_benchmark_figures_come_from_the_recorded_run() -> None:
    """Every duration in the README's Benchmarks section is one of the recorded run's figures."""
    section = _section("Benchmarks")
    recorded = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text(encoding="utf-8"))
    table = (ROOT / "benchmarks" / "results" / "latest.md").read_text(encoding="utf-8")
    quoted = _figures(section)
    assert quoted
    assert quoted - _figures(table) == set()
    assert not recorded.get("quick"), "the README's figures come from a full run, not --quick"
