#!/usr/bin/env bash
# System packages the test suite needs. Called by .ci/run; idempotent, quiet unless something fails.
# - chromium (Debian): the report test opens the HTML report headless; it is skipped with a reason
#   when chromium is missing.
# - dataset-fashion-mnist (Debian): Fashion-MNIST for the selection-quality benchmark
#   (benchmarks/quality.py); installed under /usr/share/datasets/fashion-mnist.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: chromium is missing and installing it needs root: apt-get install chromium" >&2
    exit 1
  fi
  log=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "system-deps: installing chromium failed (see above)" >&2
    exit 1
  fi
  rm -f "$log"
  command -v chromium >/dev/null 2>&1 || { echo "system-deps: chromium did not install" >&2; exit 1; }
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: Fashion-MNIST is missing and installing it needs root: apt-get install dataset-fashion-mnist" >&2
    exit 1
  fi
  log=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "system-deps: installing dataset-fashion-mnist failed (see above)" >&2
    exit 1
  fi
  rm -f "$log"
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || { echo "system-deps: dataset-fashion-mnist did not install" >&2; exit 1; }
fi
