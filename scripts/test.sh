#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the offline test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One OpenMP/BLAS thread: on a loaded 2-core box more threads run several times slower.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check --quiet . || { echo "ruff found problems (see above); fix them or run .venv/bin/ruff check --fix ." >&2; exit 1; }
exec .venv/bin/python -m pytest -q "$@"
