#!/usr/bin/env bash
# torchcf's training speed on a CUDA machine, in under 5 minutes: samples/s per model at the
# seed's batch size and at large batches, and the fast mode's whole GMF run; on a machine with
# several GPUs, a GMF run on all of them (torchrun, NCCL) beside the same run on one.
#
#   bash benchmarks/gpu.sh [NCF_DIR] [--amp]
#
# NCF_DIR defaults to ../shared/data/ml-1m/ncf; without it a synthetic ML-1M-shaped data set is
# used. It runs in .venv-gpu: made once, on top of the system's CUDA torch when python3 has one
# (--system-site-packages), else with pip's default (CUDA) torch wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
# the first argument is the data unless it is a flag (bash benchmarks/gpu.sh --amp)
DATA=../shared/data/ml-1m/ncf
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  DATA=$1
  shift
fi
has_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
if ! { [ -x .venv-gpu/bin/python ] && has_cuda .venv-gpu/bin/python; }; then
  if ! command -v nvidia-smi >/dev/null; then
    echo "gpu.sh: no CUDA device here (nvidia-smi not found)" >&2
    exit 1
  fi
  rm -rf .venv-gpu
  if has_cuda python3; then
    python3 -m venv --system-site-packages .venv-gpu
  else
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install -q "torch>=2.4,<2.14"
  fi
fi
.venv-gpu/bin/pip install -q --disable-pip-version-check -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 290 .venv-gpu/bin/python benchmarks/gpu_speed.py --data "$DATA" "$@"
# several GPUs: the same GMF run on every GPU (torchrun --nproc-per-node = GPUs, NCCL, the global
# batch sliced per rank) and on one, epoch times side by side
GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
if [ "$GPUS" -gt 1 ] && [ -d "$DATA" ]; then
  for n in 1 "$GPUS"; do
    echo "== gmf, global batch 16384, $n GPU(s)"
    timeout 300 .venv-gpu/bin/torchrun --standalone --nproc-per-node "$n" -m torchcf train \
      --data "$DATA" --model gmf --batch-size 16384 --epochs 3 --no-progress --overwrite \
      --out "/tmp/torchcf-gpu-ddp-$n" | grep -E "^epoch|^wrote"
  done
fi
