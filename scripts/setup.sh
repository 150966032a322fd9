#!/usr/bin/env bash
# Install the project (editable) and its dev tools into <project>/.venv.
#
# Usage: scripts/setup.sh
#   Creates .venv with the first Python >= 3.11 found (override with PYTHON=/path/to/python) unless it
#   exists, upgrades pip in it, then installs `-e .` with the `dev` dependency group.
#   With AIODURABLEDICT_WHEEL=dist/*.whl it installs that built wheel (with every extra) instead of
#   the checkout, so that CI tests what it ships. Safe to run again: it only installs what changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
cd "$ROOT"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

version_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null && version_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ -x "$VENV/bin/python" ]] && ! version_ok "$VENV/bin/python"; then
    die "$VENV uses Python $("$VENV/bin/python" -V 2>&1); this project needs >= 3.11 (remove .venv and run again)"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    python="$(find_python)" || die "no Python >= 3.11 found (set PYTHON=/path/to/python3.11)"
    log "creating .venv with $python ($("$python" -V 2>&1))"
    if ! "$python" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        # Debian ships venv/ensurepip separately.
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null && [[ "$python" == /usr/bin/* ]]; then
            minor="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            log "installing python$minor-venv"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$minor-venv" >&2 \
                || die "apt-get install python$minor-venv failed"
        fi
        "$python" -m venv "$VENV" || die "could not create $VENV with $python (on Debian: apt-get install python3-venv)"
    fi
fi

PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# `pip install --group` needs pip >= 25.1.
"$PY" -m pip install -q --upgrade 'pip>=25.1' || die "could not upgrade pip in .venv"

if [[ -n "${AIODURABLEDICT_WHEEL:-}" ]]; then
    # A built wheel instead of the checkout (CI tests what it ships); the dev group's tools beside it.
    wheel=( $AIODURABLEDICT_WHEEL )
    [[ -f "${wheel[0]}" ]] || die "AIODURABLEDICT_WHEEL names no file: $AIODURABLEDICT_WHEEL"
    "$PY" -m pip install -q "${wheel[0]}[all]" --group dev || die "pip install of ${wheel[0]} failed"
elif "$PY" -m pip install --help 2>/dev/null | grep -q -- '--group'; then
    "$PY" -m pip install -q -e . --group dev || die "pip install -e . --group dev failed"
else
    # An old pip that could not be upgraded (e.g. offline with a pinned index): read the group ourselves.
    log "pip has no --group; reading [dependency-groups] dev from pyproject.toml"
    listed="$("$PY" - <<'EOF'
import tomllib

with open("pyproject.toml", "rb") as f:
    groups = tomllib.load(f)["dependency-groups"]


def expand(name: str) -> list[str]:
    out: list[str] = []
    for item in groups[name]:
        if isinstance(item, dict):
            out += expand(item["include-group"])
        else:
            out.append(item)
    return out


for requirement in expand("dev"):
    # The project itself (e.g. "aiodurabledict[all]") is installed editable below with its extras.
    print(requirement)
EOF
    )" || die "could not read the dev group from pyproject.toml"
    mapfile -t requirements <<<"$listed"
    extras=""
    others=()
    for requirement in "${requirements[@]}"; do
        if [[ "$requirement" == aiodurabledict\[* ]]; then
            extras="${requirement#aiodurabledict}"
        else
            others+=("$requirement")
        fi
    done
    "$PY" -m pip install -q -e ".$extras" "${others[@]}" || die "pip install of the dev group failed"
fi

"$PY" -c 'import aiodurabledict' || die "aiodurabledict does not import from .venv"
log "ready: $VENV ($("$PY" -V 2>&1))"
