#!/usr/bin/env bash
# Create ./.venv (if needed) and install unisrec with its extras. Torch is pinned to 2.13.0 first (the CPU
# build where pip finds it, e.g. from https://download.pytorch.org/whl/cpu; set UNISREC_TORCH_INDEX to that
# index on machines whose default index serves the CUDA build), so that the dependency range does not pull
# another build. UNISREC_TORCH changes the version, UNISREC_EXTRAS the extras.
# Quiet on success; on a failure the step's full pip output is shown and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

step() {  # step DESCRIPTION COMMAND...: run quietly, show everything if it fails
  local what=$1
  shift
  if ! "$@" >"$LOG" 2>&1; then
    echo "setup: $what failed:" >&2
    cat "$LOG" >&2
    exit 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $PYTHON" "$PYTHON" -m venv .venv
fi
step "upgrading pip" .venv/bin/python -m pip install --quiet --upgrade pip
TORCH_ARGS=("torch==${UNISREC_TORCH:-2.13.0}")
if [ -n "${UNISREC_TORCH_INDEX:-}" ]; then
  TORCH_ARGS+=(--index-url "$UNISREC_TORCH_INDEX")
fi
step "installing torch" .venv/bin/python -m pip install --quiet "${TORCH_ARGS[@]}"
step "installing unisrec[${UNISREC_EXTRAS:-dev,serve,report}]" \
  .venv/bin/python -m pip install --quiet -e ".[${UNISREC_EXTRAS:-dev,serve,report}]"
.venv/bin/python -c "import torch, unisrec; print('unisrec', unisrec.__version__, 'torch', torch.__version__)"
