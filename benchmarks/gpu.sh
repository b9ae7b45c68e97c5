#!/usr/bin/env bash
# torchcf's training speed on a CUDA machine, in under 5 minutes: samples/s per model at the
# seed's batch size and at large batches, and the fast mode's whole GMF run.
#
#   bash benchmarks/gpu.sh [NCF_DIR] [--amp]
#
# NCF_DIR defaults to ../shared/data/ml-1m/ncf; without it a synthetic ML-1M-shaped data set is
# used. It needs a CUDA build of torch: it uses .venv if that has one, else python3; if neither
# does, it installs torchcf into a fresh .venv-gpu with pip's default (CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/ml-1m/ncf}
shift || true
has_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
PY=""
for candidate in .venv/bin/python .venv-gpu/bin/python python3; do
  if [ -x "$(command -v "$candidate" || true)" ] && has_cuda "$candidate"; then PY=$candidate; break; fi
done
if [ -z "$PY" ]; then
  if ! command -v nvidia-smi >/dev/null; then
    echo "gpu.sh: no CUDA device here (nvidia-smi not found)" >&2; exit 1
  fi
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q "torch>=2.4,<2.14"
  PY=.venv-gpu/bin/python
fi
"$PY" -m pip install -q -e . >/dev/null 2>&1 || "$PY" -m pip install -q -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 290 "$PY" benchmarks/gpu_speed.py --data "$DATA" "$@"
