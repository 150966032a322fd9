#!/usr/bin/env bash
# Lint, formatting and types: ruff check, ruff format --check, mypy --strict (configured in
# pyproject.toml), and pyright --verifytypes (every public name of the package has a known type).
#
# Usage: scripts/lint.sh [ruff|mypy|pyright]
#   Without an argument runs them all, even when one fails, and exits non-zero if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
what="${1:-all}"
case "$what" in
    all | ruff | mypy | pyright) ;;
    *)
        echo "usage: $0 [ruff|mypy|pyright]" >&2
        exit 2
        ;;
esac

for tool in ruff mypy pyright; do
    [[ -x "$BIN/$tool" ]] || { echo "lint: ERROR: $BIN/$tool is missing: run scripts/setup.sh first" >&2; exit 1; }
done

rc=0
if [[ "$what" == all || "$what" == ruff ]]; then
    echo "lint: ruff check" >&2
    "$BIN/ruff" check . || rc=1
    echo "lint: ruff format --check" >&2
    "$BIN/ruff" format --check . || rc=1
fi
if [[ "$what" == all || "$what" == mypy ]]; then
    # mypy refuses a configured folder without Python files (e.g. a still empty examples/): pass
    # only the configured paths that have some.
    targets="$("$BIN/python" - <<'EOF'
import pathlib
import tomllib

paths = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["tool"]["mypy"]["files"]
for path in [paths] if isinstance(paths, str) else paths:
    p = pathlib.Path(path)
    if p.is_file() or any(p.rglob("*.py")):
        print(path)
EOF
    )" || { echo "lint: ERROR: could not read [tool.mypy] files from pyproject.toml" >&2; exit 1; }
    mapfile -t targets <<<"$targets"
    echo "lint: mypy ${targets[*]}" >&2
    "$BIN/mypy" "${targets[@]}" || rc=1
fi

if [[ "$what" == all || "$what" == pyright ]]; then
    # The package as users import it: every public name's type known to a type checker. Run from
    # another folder with the checkout on the path, so that pyright finds the sources themselves.
    # --verifytypes resolves imports with the first python on PATH (it ignores --pythonpath): the
    # venv's comes first, or redis-py and Tortoise would be missing and every model's base unknown.
    echo "lint: pyright --verifytypes aiodurabledict" >&2
    (cd "$(mktemp -d)" && PATH="$BIN:$PATH" PYTHONPATH="$ROOT" "$BIN/pyright" --pythonpath "$BIN/python" \
        --verifytypes aiodurabledict --ignoreexternal) || rc=1
fi

if ((rc != 0)); then
    echo "lint: FAILED" >&2
fi
exit "$rc"
