#!/usr/bin/env bash
# presel's `protocol: official` k-means and picks against a real scikit-learn 1.2.2 (the version LLaVA pins,
# the authors' environment). Not part of scripts/test.sh: it installs scikit-learn 1.2.2, numpy<2 and
# faiss-cpu<1.9 from PyPI into a throwaway venv outside the project.
#
#   bash scripts/check-official.sh [WORKDIR]     # default WORKDIR: ${TMPDIR:-/tmp}/presel-check-official
#
# Prints, per problem (20 seeded problems, n 150..20,000, k = max(1, int(0.01 n)), d 64 and 768), whether
# presel's labels equal KMeans(n_clusters, random_state=12345).fit(X).labels_ of scikit-learn 1.2.2, and
# whether the picks on an authors'-shaped pool (3,200 records, 10 tasks, shared COCO-like images, 1-4
# records per image, budget 15%) are identical. Exit 0 when >= 19/20 partitions match and the picks do.
# Environment: PYTHON (presel's interpreter; default .venv/bin/python), SK122_VENV (default
# ${TMPDIR:-/tmp}/venv-sk122), SK122_PYTHON (an interpreter for the venv; default python3.11).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-${TMPDIR:-/tmp}/presel-check-official}
venv=${SK122_VENV:-${TMPDIR:-/tmp}/venv-sk122}
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$venv/bin/python" -c "import sklearn, faiss; assert sklearn.__version__ == '1.2.2'" 2>/dev/null; then
  echo "creating $venv (scikit-learn==1.2.2, numpy<2, faiss-cpu<1.9 from PyPI)" >&2
  "${SK122_PYTHON:-python3.11}" -m venv "$venv"
  "$venv/bin/pip" install -q "scikit-learn==1.2.2" "numpy<2" "faiss-cpu<1.9"
fi
mkdir -p "$work"
"$py" "$root/scripts/check_official.py" problems "$work"
# both sides at once (about 12 CPU-minutes each, one thread); results per problem, so a rerun resumes
"$venv/bin/python" "$root/scripts/check_official.py" sk122 "$work" & sk=$!
"$py" "$root/scripts/check_official.py" presel "$work" & ps=$!
wait "$sk"; wait "$ps"
"$py" "$root/scripts/check_official.py" compare "$work"
