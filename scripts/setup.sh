#!/usr/bin/env bash
# Create .venv (if missing) and install torchcf with its test tools. Idempotent.
# TORCH_SPEC picks the torch build (default torch==2.13.0: the CPU wheel on our machines; pip
# would otherwise pull a multi-GB CUDA build). PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check "$TORCH_SPEC"
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
