#!/usr/bin/env bash
# The test command: set-up, lint, the import floors (import-linter), types, the compose file, all fast tests, then the bounded subset of
# slow tests on the real default model (so the real model path runs on every submission).
#
#   ./scripts/test.sh [PYTEST_ARGS...]     e.g. ./scripts/test.sh -x -k planner
#
# Every step runs even after one fails (set-up excepted), a summary follows, and the exit status is
# non-zero if any step failed. Extra arguments go to both pytest runs. pytest's "no tests collected"
# (exit 5) counts as a failure, except in the ci_subset step when extra arguments were given (a filter
# may legitimately leave none of the subset).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOEQOS_VENV:-$ROOT/.venv}"
REPORTS="$ROOT/out/test-reports"
cd "$ROOT"

"$ROOT/scripts/setup.sh" || { echo "test.sh: set-up failed" >&2; exit 1; }
export PATH="$VENV/bin:$PATH"
PY="$VENV/bin/python"
rm -rf "$REPORTS" && mkdir -p "$REPORTS"

STEPS=()
FAILED=0

# run NAME COMMAND...: run one step, time it, record its outcome.
run() {
    local name="$1" start=$SECONDS rc
    shift
    printf '\n===== [%4ds] %s: %s\n' "$SECONDS" "$name" "$*"
    "$@"
    rc=$?
    record "$name" "$rc" $((SECONDS - start))
}

record() {
    local name="$1" rc="$2" took="$3" outcome
    case "$rc" in
        0) outcome="ok" ;;
        skip) outcome="skipped" ;;
        *) outcome="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    STEPS+=("$(printf '%-14s %-18s %5ds' "$name" "$outcome" "$took")")
}

# The compose CLI, if there is one or it can be installed (Debian's docker-compose needs no daemon for
# `config`); prints nothing when none can be had.
compose_cli() {
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif command -v docker-compose >/dev/null; then
        echo "docker-compose"
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's docker-compose to check the compose files" >&2
        if timeout 300 apt-get update -qq >&2 && timeout 300 apt-get install -y -qq docker-compose >&2; then
            echo "docker-compose"
        fi
    fi
}

compose_step() {
    local start=$SECONDS cli
    printf '\n===== [%4ds] compose: config -q on docker-compose.yml (+ docker-compose.gpu.yml)\n' "$SECONDS"
    cli="$(compose_cli)"
    if [ -z "$cli" ]; then
        echo "SKIPPED: no docker compose CLI and none could be installed (tests/e2e/test_compose.py still checks the structure)"
        record compose skip $((SECONDS - start))
        return
    fi
    $cli -f docker-compose.yml config -q && $cli -f docker-compose.yml -f docker-compose.gpu.yml config -q
    record compose $? $((SECONDS - start))
}

pytest_step() {
    local name="$1" marker="$2" start=$SECONDS rc
    shift 2
    printf '\n===== [%4ds] %s: pytest -m "%s" %s\n' "$SECONDS" "$name" "$marker" "$*"
    "$PY" -m pytest -m "$marker" --junitxml="$REPORTS/$name.xml" "$@"
    rc=$?
    if [ "$rc" = 5 ] && [ "$name" = ci_subset ] && [ $# -gt 0 ]; then
        echo "no ci_subset test matched the given arguments; not a failure"
        rc=skip
    fi
    record "$name" "$rc" $((SECONDS - start))
}

run ruff-check "$PY" -m ruff check .
run ruff-format "$PY" -m ruff format --check .
run layers "$VENV/bin/lint-imports"
run mypy "$PY" -m mypy core api client planner apps/moeqos/cli apps/moeqos/demo apps/moeqos/gateway
compose_step
pytest_step fast "not slow" "$@"
run model-prepare moeqos model prepare
pytest_step ci_subset "ci_subset" "$@"

printf '\n===== summary (%ds in all)\n' "$SECONDS"
printf '%s\n' "${STEPS[@]}"
if [ "$FAILED" != 0 ]; then
    echo "test.sh: FAILED (see the steps above)"
else
    echo "test.sh: all steps passed"
fi
# The closing line: the test counts over both pytest runs, from their JUnit reports.
"$PY" - "$REPORTS" <<'EOF'
import pathlib, sys, xml.etree.ElementTree as ET

totals = dict(tests=0, failures=0, errors=0, skipped=0)
for report in sorted(pathlib.Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"tests: {passed} passed, {failed} failed, {totals['skipped']} skipped")
EOF
exit "$FAILED"
