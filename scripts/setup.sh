#!/usr/bin/env bash
# Create .venv (if missing) and install photolabel with its test extras.
# The same steps are used by scripts/demo.sh, scripts/test.sh, .ci/run and the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch is pinned to the CPU build available on the package index (see DESIGN.md);
# installing it first keeps pip from resolving a CUDA build for it.
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet "torch==2.13.0"
EXTRAS="${PHOTOLABEL_EXTRAS-test}"   # empty for a runtime-only install (the Dockerfile)
if [ -n "$EXTRAS" ]; then
  .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
