#!/usr/bin/env bash
# Run the whole test suite against real servers, then every example.
#
# Usage: scripts/test.sh [--ci] [--no-examples] [pytest args...]
#   1. scripts/servers.sh start: Redis, PostgreSQL, ZooKeeper, memcached and MariaDB on loopback, and
#      a Redis Cluster, a Redis Sentinel set and a ZooKeeper ensemble on ports of their own; their
#      addresses come into the tests' environment from scripts/servers.sh env.
#   2. pytest under coverage (branch coverage of aiodurabledict; extra arguments go to pytest); the
#      whole suite fails under the floor below.
#   3. each examples/*.py (except _*.py) must exit 0 within $AIODURABLEDICT_EXAMPLE_TIMEOUT seconds
#      (default 120); skipped with --no-examples.
#
# Strict mode (--ci, or CI=true in the environment): the servers' packages are installed when missing
# (scripts/servers.sh install: the fault tests need the binaries), a server that cannot be started is
# an error, and so is every test that would otherwise skip because its server is missing
# (AIODURABLEDICT_REQUIRE_SERVERS=1). Without it, a missing server only makes its tests skip.
# Any failure makes the exit status non-zero; so does "no tests collected".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
EXAMPLE_TIMEOUT="${AIODURABLEDICT_EXAMPLE_TIMEOUT:-120}"
# Branch coverage of aiodurabledict below which the whole suite fails.
COVERAGE_FLOOR=90

log() { printf 'test: %s\n' "$*" >&2; }
die() { printf 'test: ERROR: %s\n' "$*" >&2; exit 1; }

strict=0
[[ "${CI:-}" == true || "${CI:-}" == 1 ]] && strict=1
examples=1
pytest_args=()
for arg in "$@"; do
    case "$arg" in
        --ci) strict=1 ;;
        --no-examples) examples=0 ;;
        *) pytest_args+=("$arg") ;;
    esac
done

[[ -x "$PY" ]] || die ".venv is missing: run scripts/setup.sh first"

if ((strict)); then
    "$ROOT/scripts/servers.sh" install || die "the servers' packages could not be installed"
fi
if ! "$ROOT/scripts/servers.sh" start; then
    ((strict)) && die "the test servers could not be started"
    log "WARNING: some servers could not be started; their tests will be skipped"
fi
eval "$("$ROOT/scripts/servers.sh" env)"
if ((strict)); then
    export AIODURABLEDICT_REQUIRE_SERVERS=1
fi

rc=0
log "pytest${pytest_args[*]:+ ${pytest_args[*]}}"
# coverage starts before pytest, so that the package imported by its pytest plugin is measured whole.
rm -f "$ROOT/.coverage"
"$PY" -m coverage run -m pytest "${pytest_args[@]}" || rc=$?
if ((rc == 5)); then
    log "ERROR: pytest collected no tests"
elif ((rc != 0)); then
    log "ERROR: pytest failed (exit status $rc)"
fi
# The floor holds for the whole suite; a run of some tests only reports.
if ((${#pytest_args[@]} == 0)); then
    "$PY" -m coverage report --fail-under="$COVERAGE_FLOOR" || { log "ERROR: branch coverage under $COVERAGE_FLOOR %"; rc=1; }
else
    "$PY" -m coverage report || true
fi

if ((examples)); then
    shopt -s nullglob
    scripts=("$ROOT"/examples/*.py)
    shopt -u nullglob
    if ((${#scripts[@]} == 0)); then
        log "no examples to run"
    fi
    for example in "${scripts[@]}"; do
        name="examples/$(basename "$example")"
        # Package markers and private helpers are not examples.
        [[ "$(basename "$example")" == _* ]] && continue
        log "running $name"
        if timeout --kill-after=10 "$EXAMPLE_TIMEOUT" "$PY" "$example" </dev/null; then
            :
        else
            status=$?
            log "ERROR: $name exited with status $status"
            rc=1
        fi
    done
fi

if ((rc != 0)); then
    log "FAILED"
    exit "$rc"
fi
log "all passed"
