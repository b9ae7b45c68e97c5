#!/usr/bin/env bash
# Create .venv (if missing) and install torchcf with its test tools. Idempotent.
# --browser also installs Debian's chromium and chromium-driver (apt-get; sudo when not root) for
# the page's tests in a real browser, when they are not there yet.
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
if [ "${1:-}" = "--browser" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
