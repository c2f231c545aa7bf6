#!/usr/bin/env bash
# The main job: set up (venv, stubs, default model; quick when already done), then `moeqos demo`:
# a planner and two executors as local processes, two QoS targets deployed, a generation streamed from
# each, the plans with predicted and measured tokens/s and perplexity, and the frontier plot.
#
#   ./scripts/demo.sh [moeqos demo options]      e.g. ./scripts/demo.sh --out /tmp/demo
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" --model
cd "$ROOT"
exec "${MOEQOS_VENV:-$ROOT/.venv}/bin/moeqos" demo "$@"
