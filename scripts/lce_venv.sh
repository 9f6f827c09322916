#!/usr/bin/env bash
# Build (or find) the venv with Larq Compute Engine's interpreter that r2b's LCE checks run in:
# larq-compute-engine==0.16.0 (--no-deps) and numpy<2, in $R2B_LCE_VENV (default
# ~/.cache/r2b/lce-venv-0.16.0). The tests build it themselves when it is missing; this is the
# same step by hand. Usage: scripts/lce_venv.sh [--venv DIR] [--python PYTHON3]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${R2B_PYTHON:-.venv/bin/python}" -m r2b.lce.runtime "$@"
