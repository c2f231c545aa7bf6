#!/usr/bin/env bash
# Generate the Python gRPC stubs (moeqos_proto/**/*_pb2*.py and .pyi) from protos/ into the repo root.
# The one command CI, the Dockerfiles and the README use. Works from any cwd; uses the current
# `python` (or $PYTHON) and its grpc_tools.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
"$PYTHON" -c "import grpc_tools" 2>/dev/null || {
    echo "gen_protos: $PYTHON has no grpc_tools; pip install grpcio-tools (the dev extra)" >&2
    exit 1
}

cd "$ROOT"
rm -rf moeqos_proto  # wholly generated (gitignored): stale stubs of deleted protos must go
mapfile -t PROTOS < <(find protos -name '*.proto' | sort)
"$PYTHON" -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. "${PROTOS[@]#protos/}"

# Every generated directory is a package, so `import moeqos_proto.common.v1.common_pb2` resolves.
find moeqos_proto -type d -exec sh -c 'touch "$1/__init__.py"' _ {} \;
echo "generated stubs for ${#PROTOS[@]} protos into $ROOT/moeqos_proto"
