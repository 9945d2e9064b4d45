#!/usr/bin/env bash
# Create ./.venv (if needed) and install unisrec with its extras. Torch is pinned to the CPU build 2.13.0
# first, so that the dependency range does not pull a multi-GB CUDA build; set UNISREC_TORCH to change it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet "torch==${UNISREC_TORCH:-2.13.0}" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install --quiet -e ".[${UNISREC_EXTRAS:-dev,serve,report}]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import torch, unisrec; print('unisrec', unisrec.__version__, 'torch', torch.__version__)"
