#!/usr/bin/env bash
# The GPU check: presel's CUDA paths (bf16 feature extraction from JPEG files, batched bf16 IRS scoring,
# bf16 LoRA fine-tuning with a resume) on one GPU, figures printed one line each and written as JSON.
#
#   bash scripts/gpu-check.sh OUT              # one GPU (sized for an H200: under 8 minutes)
#   bash scripts/gpu-check.sh --cpu-smoke OUT  # the same code paths on CPU, tiny models, under a minute
#
# OUT gets figures.json, throughputs.json (for `presel run CONFIG --dry-run --throughputs FILE`),
# throughputs-7b-scaled.json, dry-run.txt, dry-run-7b-scaled.txt, gpu-check.log and (GPU mode: the
# gpu-marked tests run after the check) gpu-tests.log. Nothing is downloaded:
# the models are built here (benchmarks/gpu_check.py says which). Python: $PYTHON when set, else
# .venv/bin/python when present, else python3 (a machine whose python3 already holds a CUDA torch + transformers + peft).
set -euo pipefail
usage() { echo "usage: bash scripts/gpu-check.sh [--cpu-smoke] OUT" >&2; exit 2; }
smoke=""
if [ "${1:-}" = "--cpu-smoke" ]; then smoke=--cpu-smoke; shift; fi
[ $# -eq 1 ] || usage
out=$1
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
mkdir -p "$out"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -n "$smoke" ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
rc=0
"$py" "$root/benchmarks/gpu_check.py" $smoke "$out" 2>&1 | tee "$out/gpu-check.log" || rc=${PIPESTATUS[0]}
if [ -z "$smoke" ]; then
  # the gpu-marked tests (tests/gpu: bf16 embed, batched bf16 IRS, bf16 LoRA + resume), log in OUT
  echo "gpu tests (pytest tests/gpu):"
  (cd "$root" && OMP_NUM_THREADS=1 timeout 300 "$py" -m pytest -q -p no:cacheprovider -rs tests/gpu) \
    >"$out/gpu-tests.log" 2>&1 || rc=$((rc ? rc : 1))
  tail -n 5 "$out/gpu-tests.log"
fi
exit "$rc"
