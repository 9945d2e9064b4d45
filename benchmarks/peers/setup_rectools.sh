#!/usr/bin/env bash
# Make the RecTools peer's own virtual environment (RecTools 0.19 pins numpy < 2,
# so it cannot share unisrec's environment).
#
#   bash benchmarks/peers/setup_rectools.sh [VENV_DIR]
#
# Default VENV_DIR: benchmarks/peers/.venv-rectools (git-ignored).
# torch is installed first on its own so pip picks the wheel available on this
# machine (CPU) instead of resolving a different build through rectools' extras.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-rectools}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade pip
"$venv/bin/python" -m pip install "torch==2.13.0"
"$venv/bin/python" -m pip install "rectools[torch]==0.19.0"
# the peer reads the dataset's parquet files (pandas needs pyarrow for them)
"$venv/bin/python" -m pip install "pyarrow==19.0.1"  # the newest releases need numpy >= 2
"$venv/bin/python" - <<'PY'
import numpy
import pyarrow
import rectools
import torch

print(f"rectools {rectools.__version__}, torch {torch.__version__}, numpy {numpy.__version__}, pyarrow {pyarrow.__version__}")
PY
