#!/usr/bin/env bash
# A short slot on a GPU machine, used well: the GPU test subset, benchmarks/gpu.py, then two study trials sharing one
# GPU at --gpus-per-trial 0.5 (benchmarks/shared_gpu.py). At most 8 minutes by design: each part runs under its own
# timeout, and the timeouts add up to 480 s. Estimates on an H100 (not yet measured there):
#   1. GPU test subset                        ~40 s   (timeout  90 s): pytest start-up, the CUDA tests and the CPU tests of their modules
#   2. benchmarks/gpu.py, both settings       ~190 s  (timeout 270 s): 2 settings x 9 variants x 50 batches of
#      ResNet-50 (bf16, channels-last); the 224 px PIL loader without workers is the slowest part (~10 s); cifar32
#      adds SPLoRA model only, eager and graphed, at 4 pruned densities (~40 s: each network pruned on the CPU,
#      5 s each on the 2-core dev VM under load, then 50 batches of a smaller network per variant)
#   3. benchmarks/shared_gpu.py, 2 trials     ~70 s   (timeout 120 s): Ray start, 2 smoke trials at once (1 epoch
#      + 1 pruning step on digits each), MLflow records; prints each trial's peak GPU memory and whether they overlapped
# A part that fails or times out is reported and the next one still runs; the exit status is the first failure's.
# Part 3 needs the study's stack (Ray, Optuna, MLflow); on an image without it, it is skipped with one line.
# Usage: benchmarks/gpu_check.sh [extra gpu.py flags]   (run from the repository root; PYTHON overrides the interpreter)
# Exits 2 at once, with one line, when there is no CUDA GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)'; then
    echo "gpu_check.sh needs a CUDA GPU, and torch.cuda.is_available() is False on this machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
part() {  # part NAME SECONDS COMMAND...: run COMMAND under a timeout, report how it ended and how long it took
    local name=$1 seconds=$2 started=$SECONDS rc
    shift 2
    echo "== $name (timeout ${seconds}s)"
    timeout "$seconds" "$@"
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - started))s$([ "$rc" = 124 ] && echo ' (timed out)')"
    if [ "$rc" != 0 ] && [ "$status" = 0 ]; then status=$rc; fi
}
part "GPU test subset" 90 "$PYTHON" -m pytest -q -p no:cacheprovider tests/spa/test_cuda.py tests/spa/test_graphs.py \
    tests/spa/test_fused.py \
    tests/spa/test_gpu_data.py tests/spa/test_nosync.py tests/spa/test_training.py
part "benchmarks/gpu.py" 270 "$PYTHON" benchmarks/gpu.py "$@"
if "$PYTHON" -c 'import ray, optuna, mlflow' 2>/dev/null; then
    part "benchmarks/shared_gpu.py" 120 "$PYTHON" benchmarks/shared_gpu.py --timeout 110
else  # a bare GPU image without the study's stack (Ray's wheel alone is 79 MB): say so, do not fail the check
    echo "== benchmarks/shared_gpu.py: skipped, ray/optuna/mlflow are not importable with $PYTHON"
fi
echo "== gpu_check.sh: exit $status after ${SECONDS}s"
exit "$status"
