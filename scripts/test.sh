#!/usr/bin/env bash
# Set up ./.venv and run the test suite (lint + tests). Extra arguments go to pytest, e.g. `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy unisrec tests
.venv/bin/python -m pytest -q "$@"
