#!/usr/bin/env bash
# System packages the test suite needs. Called by .ci/run; safe to rerun.
set -euo pipefail
