#!/usr/bin/env bash
# A short slot on a GPU machine, used well: the GPU test subset, then benchmarks/gpu.py; about 5-8 minutes on an H100.
# Usage: benchmarks/gpu_check.sh [extra gpu.py flags]   (run from the repository root; PYTHON overrides the interpreter)
# Exits 2 at once, with one line, when there is no CUDA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)'; then
    echo "gpu_check.sh needs a CUDA GPU, and torch.cuda.is_available() is False on this machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== GPU test subset"
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/spa/test_cuda.py tests/spa/test_fused.py \
    tests/spa/test_gpu_data.py tests/spa/test_nosync.py tests/spa/test_training.py
echo "== benchmarks/gpu.py"
timeout 300 "$PYTHON" benchmarks/gpu.py "$@"
