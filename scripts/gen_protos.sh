#!/usr/bin/env bash
# Generate the Python gRPC stubs (moeqos.proto.*: *_pb2.py, *_pb2_grpc.py, *_pb2.pyi) from protos/ into
# api/, the source root of the wire layer (api/moeqos/proto/, gitignored). The one command CI, the
# Dockerfiles and the README use. Works from any cwd; uses the current `python` (or $PYTHON) and its
# grpc_tools.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
"$PYTHON" -c "import grpc_tools" 2>/dev/null || {
    echo "gen_protos: $PYTHON has no grpc_tools; pip install grpcio-tools (the dev extra)" >&2
    exit 1
}

cd "$ROOT"
OUT=api
# Wholly generated (gitignored) but for the tracked moeqos/proto/__init__.py, which lets an editable
# install map the package before any stub exists: stale stubs of deleted protos must go.
find "$OUT/moeqos/proto" -mindepth 1 -maxdepth 1 ! -name __init__.py -exec rm -rf {} +
mapfile -t PROTOS < <(find protos -name '*.proto' | sort)
"$PYTHON" -m grpc_tools.protoc -Iprotos --python_out="$OUT" --grpc_python_out="$OUT" --pyi_out="$OUT" \
    "${PROTOS[@]#protos/}"

# Every generated directory below moeqos/ is a package, so `import moeqos.proto.common.v1.common_pb2`
# resolves (moeqos itself stays a namespace package: it has no __init__.py anywhere).
find "$OUT/moeqos/proto" -mindepth 1 -type d -exec sh -c 'touch "$1/__init__.py"' _ {} \;
echo "generated stubs for ${#PROTOS[@]} protos into $ROOT/$OUT/moeqos/proto"
