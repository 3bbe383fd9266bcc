#!/usr/bin/env bash
# The demo command: sets up .venv if needed, then runs the whole pipeline on the offline demo pool.
# Extra arguments go to `presel demo` (e.g. `bash scripts/demo.sh --out runs/demo2 --compare`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/presel demo "$@"
